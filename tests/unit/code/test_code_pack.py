"""pack_code: a deterministic, content-addressed tar of the code, with its limit and its cache."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dstack.code import CodeError, CodeTooLargeError, IgnoreRules, pack_code, walk_files
from dstack.code.errors import format_size

if TYPE_CHECKING:
    from conftest import TreeSpec

    MakeTree = Callable[[Path, TreeSpec], None]

FIXED_MTIME_NS = 1_700_000_000_123_456_789
LONG_NAME = "deep/" + "n" * 120 + "/" + "f" * 150 + ".txt"
SAMPLE: TreeSpec = {
    "train.py": "print('train')\n",
    "scripts/run.sh": "#!/bin/sh\necho run\n",
    "data/.keep": "",
    "empty": None,
    "link": ("symlink", "scripts/run.sh"),
    LONG_NAME: "long",
    "unicode-é.txt": "é",
    ".gitignore": "*.pyc\n",
    "cache.pyc": "junk",
    ".git/config": "[core]\n",
    ".git/info/exclude": "local-notes.txt\n",
    "local-notes.txt": "mine",
}


def _freeze_mtimes(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS), follow_symlinks=False)


@pytest.fixture
def sample(make_tree: MakeTree, tmp_path: Path) -> Path:
    root = tmp_path / "code"
    make_tree(root, SAMPLE)
    (root / "scripts" / "run.sh").chmod(0o755)
    (root / os.fsdecode(b"raw-\xff.bin")).write_bytes(b"\x00\x01")
    return root


def test_same_tree_gives_the_same_bytes_with_a_fresh_cache(sample: Path, tmp_path: Path) -> None:
    first = pack_code(sample, cache_dir=tmp_path / "cache1")
    second = pack_code(sample, cache_dir=tmp_path / "cache2")
    assert first.sha256 == second.sha256
    assert first.path != second.path
    content = first.path.read_bytes()
    assert content == second.path.read_bytes()
    assert hashlib.sha256(content).hexdigest() == first.sha256
    assert first.path.name == f"{first.sha256}.tar"
    assert first.size == len(content)
    assert first.files == 8  # 7 files and 1 symlink; directories not counted, cache.pyc ignored


def test_identical_trees_in_different_places_give_the_same_digest(
    make_tree: MakeTree, tmp_path: Path
) -> None:
    digests = set()
    for place in ("one", "elsewhere/two"):
        root = tmp_path / place
        make_tree(root, SAMPLE)
        _freeze_mtimes(root)
        digests.add(pack_code(root, cache_dir=tmp_path / "cache").sha256)
    assert len(digests) == 1


def test_a_changed_byte_gives_another_digest_even_with_size_and_mtime_kept(
    sample: Path, tmp_path: Path
) -> None:
    before = pack_code(sample, cache_dir=tmp_path / "cache")
    target = sample / "train.py"
    kept = target.stat()
    target.write_text("print('TRAIN')\n")  # same length, other bytes
    os.utime(target, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert target.stat().st_size == kept.st_size
    after = pack_code(sample, cache_dir=tmp_path / "cache")
    assert after.sha256 != before.sha256
    assert before.path.exists()  # the previous archive is kept for a while


def test_ignored_files_coming_and_going_do_not_change_the_digest(sample: Path, tmp_path: Path) -> None:
    _freeze_mtimes(sample)
    before = pack_code(sample, cache_dir=tmp_path / "cache")
    # Creating files changes their directories' mtimes; only what is packed may count.
    (sample / "scripts" / "new.pyc").write_text("compiled")
    (sample / "data" / "other.pyc").write_text("compiled")
    assert pack_code(sample, cache_dir=tmp_path / "cache").sha256 == before.sha256
    assert pack_code(sample, cache_dir=tmp_path / "fresh-cache").sha256 == before.sha256


def test_archive_round_trips(sample: Path, tmp_path: Path) -> None:
    packed = pack_code(sample, cache_dir=tmp_path / "cache")
    out = tmp_path / "out"
    with tarfile.open(packed.path) as archive:
        members = archive.getmembers()
        archive.extractall(out, filter="fully_trusted")
    assert [member.name for member in members] == [entry.rel_path for entry in walk_files(sample)]
    assert not [m.name for m in members if m.name == ".git" or m.name.startswith((".git/", "local-notes"))]
    assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members)
    for entry in walk_files(sample):
        original, copy = sample / entry.rel_path, out / entry.rel_path
        if entry.kind == "symlink":
            assert copy.is_symlink() and os.readlink(copy) == os.readlink(original)
            continue
        assert stat.S_IMODE(copy.lstat().st_mode) == stat.S_IMODE(original.lstat().st_mode)
        if entry.kind == "dir":
            assert copy.is_dir() and not copy.is_symlink()
        else:
            assert copy.read_bytes() == original.read_bytes()
            assert int(copy.stat().st_mtime) == original.stat().st_mtime_ns // 1_000_000_000
    assert (out / "empty").is_dir() and not any((out / "empty").iterdir())
    assert (out / LONG_NAME).read_text() == "long"
    assert (out / os.fsdecode(b"raw-\xff.bin")).read_bytes() == b"\x00\x01"
    assert not (out / "cache.pyc").exists()


def test_over_the_limit_names_the_biggest_files_and_writes_nothing(
    make_tree: MakeTree, tmp_path: Path
) -> None:
    spec: TreeSpec = {f"f{size}.bin": "x" * size for size in (100, 200, 300, 400, 500, 600)}
    make_tree(tmp_path / "code", {**spec, "ignored.bin": "x" * 5000, ".dstackignore": "ignored.bin\n"})
    cache = tmp_path / "cache"
    with pytest.raises(CodeTooLargeError) as caught:
        pack_code(tmp_path / "code", limit_bytes=1000, cache_dir=cache)
    error = caught.value
    assert (error.total, error.limit) == (2100 + len("ignored.bin\n"), 1000)
    assert [path for path, _ in error.biggest] == ["f600.bin", "f500.bin", "f400.bin", "f300.bin", "f200.bin"]
    message = str(error)
    assert message.startswith(f"The code in {tmp_path / 'code'} is 2.1 KB, over the 1000 B limit;")
    assert "f600.bin (600 B), f500.bin (500 B)" in message
    assert "f100.bin" not in message and "ignored.bin" not in message
    assert message.endswith("add them to .dstackignore (or .gitignore) or raise DSTACK_CODE_LIMIT_MB")
    assert not cache.exists()
    # Ignored files do not count: the same tree fits once the big ones are ignored.
    (tmp_path / "code" / ".dstackignore").write_text("ignored.bin\nf[3-6]*.bin\n")
    assert pack_code(tmp_path / "code", limit_bytes=1000, cache_dir=cache).files == 3


def test_sizes_read_well() -> None:
    assert [
        format_size(n) for n in (0, 1023, 1024, 1536, 812 * 1024**2, 500 * 1024**2, 3 * 1024**3 // 2)
    ] == [
        "0 B",
        "1023 B",
        "1 KB",
        "1.5 KB",
        "812 MB",
        "500 MB",
        "1.5 GB",
    ]


class _OpenRecorder:
    """Collects the paths this process opens, through the interpreter's audit hook (a real
    observation of os.open/open calls, not a stand-in for them)."""

    installed = False
    active: list[str] | None = None

    @classmethod
    def hook(cls, event: str, args: tuple[object, ...]) -> None:
        if event == "open" and cls.active is not None and isinstance(args[0], str | bytes | os.PathLike):
            cls.active.append(os.fsdecode(args[0]))


@pytest.fixture
def opened_paths() -> Iterator[Callable[[], list[str]]]:
    if not _OpenRecorder.installed:
        sys.addaudithook(_OpenRecorder.hook)  # hooks cannot be removed: install once, toggle
        _OpenRecorder.installed = True
    recorded: list[str] = []

    def start() -> list[str]:
        recorded.clear()
        _OpenRecorder.active = recorded
        return recorded

    yield start
    _OpenRecorder.active = None


def test_unchanged_tree_reuses_the_archive_without_reading_files(
    sample: Path, tmp_path: Path, opened_paths: Callable[[], list[str]]
) -> None:
    cache = tmp_path / "cache"
    code_files = {str(sample / e.rel_path) for e in walk_files(sample) if e.kind == "file"}
    first_opens = opened_paths()
    first = pack_code(sample, cache_dir=cache)
    assert code_files <= set(first_opens)  # the first pack reads every file...
    second_opens = opened_paths()
    second = pack_code(sample, cache_dir=cache)
    ignore_files = {str(sample / ".gitignore")}
    assert not (code_files - ignore_files) & set(second_opens)  # ...the second reads none
    assert (second.path, second.sha256, second.size, second.files) == (
        first.path,
        first.sha256,
        first.size,
        8,
    )


def test_a_deleted_archive_is_rebuilt(sample: Path, tmp_path: Path) -> None:
    first = pack_code(sample, cache_dir=tmp_path / "cache")
    first.path.unlink()
    again = pack_code(sample, cache_dir=tmp_path / "cache")
    assert again.sha256 == first.sha256 and again.path.exists()


def test_a_damaged_index_is_ignored(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = pack_code(sample, cache_dir=cache)
    (cache / "index.json").write_text("{not json")
    assert pack_code(sample, cache_dir=cache).sha256 == first.sha256


def test_a_tampered_index_cannot_delete_files_outside_the_cache(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim.tar"
    victim.write_text("precious")
    # The oldest records are the ones a new pack drops, and deletes the archives of.
    shas = ["a" * 64, "b" * 64, "../victim", "../victim"]
    records = [{"manifest": str(n), "sha256": sha, "size": 8} for n, sha in enumerate(shas)]
    (cache / "index.json").write_text(json.dumps({"version": 1, "roots": {str(sample.resolve()): records}}))
    pack_code(sample, cache_dir=cache)
    assert victim.read_text() == "precious"


def test_only_the_last_few_archives_per_root_are_kept(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    packed = []
    for version in range(6):
        (sample / "train.py").write_text(f"print({version})\n")
        packed.append(pack_code(sample, cache_dir=cache))
    assert len({p.sha256 for p in packed}) == 6
    assert sorted(path.name for path in cache.glob("*.tar")) == sorted(p.path.name for p in packed[-3:])
    # Other roots keep their own archives.
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    other_packed = pack_code(other, cache_dir=cache)
    (sample / "train.py").write_text("print('last')\n")
    pack_code(sample, cache_dir=cache)
    assert other_packed.path.exists()
    assert len(list(cache.glob("*.tar"))) == 4
    assert not list(cache.glob(".partial-*"))


class _RulesWithSideEffect(IgnoreRules):
    """Real rules that, when the walk reaches one path, run an action: a deterministic stand-in for
    another program touching the code after it was listed but before it is read."""

    def __init__(self, root: Path, trigger: str, action: Callable[[], object]) -> None:
        super().__init__(root)
        self._trigger, self._action = trigger, action

    def is_ignored_in(self, parent_dir: str, name: str, is_dir: bool) -> bool:
        if f"{parent_dir}/{name}" == self._trigger:
            self._action()
        return super().is_ignored_in(parent_dir, name, is_dir)


@pytest.mark.parametrize(
    "action",
    [
        lambda path: path.write_text("grown: more bytes than before\n"),
        lambda path: path.write_text(""),
        lambda path: path.write_text("ORIGINAL\n"),
        lambda path: path.unlink(),
        lambda path: (path.unlink(), path.symlink_to("/etc/hostname")),
    ],
    ids=["grown", "shrunk", "rewritten-same-size", "deleted", "replaced-by-symlink"],
)
def test_a_file_changing_while_packing_is_an_error_not_a_corrupt_archive(
    make_tree: MakeTree, tmp_path: Path, action: Callable[[Path], object]
) -> None:
    root = tmp_path / "code"
    make_tree(root, {"a.txt": "original\n", "zz/trigger": ""})
    rules = _RulesWithSideEffect(root, "zz/trigger", lambda: action(root / "a.txt"))
    cache = tmp_path / "cache"
    with pytest.raises(CodeError, match=r"^The file a\.txt changed while the code was being packed"):
        pack_code(root, cache_dir=cache, rules=rules)
    assert not [path for path in cache.iterdir() if path.name != "index.json"]


def test_an_unreadable_file_is_a_code_error_naming_it(
    reachable_tmp: Path, unprivileged_error: Callable[[Callable[[], object]], str]
) -> None:
    root = reachable_tmp / "code"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    (root / "secret.key").write_text("hidden")
    (root / "secret.key").chmod(0)
    cache = reachable_tmp / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    message = unprivileged_error(lambda: pack_code(root, cache_dir=cache))
    assert message.startswith(f"Cannot read {root / 'secret.key'}")
    assert "add it to .dstackignore" in message
    assert not list(cache.iterdir())


def test_dstack_state_folders_never_travel_even_from_a_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    from dstack.code import pack_code

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    (home / ".dstack" / "server").mkdir(parents=True)
    (home / ".dstack" / "config.yml").write_text("token: secret")
    (home / "train.py").write_text("print(1)")
    packed = pack_code(home, cache_dir=home / ".dstack" / "cache" / "code")
    with tarfile.open(packed.path) as archive:
        names = archive.getnames()
    assert "train.py" in names
    assert not any(name.startswith(".dstack") for name in names)
