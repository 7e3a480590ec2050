"""snapshot_code: the code's manifest (each file named by the sha256 of its content), its size limit, and
the hash cache that keeps unchanged files from being read again."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dstack.code import CodeError, CodeTooLargeError, IgnoreRules, snapshot_code, snapshot_paths, walk_files
from dstack.code.errors import format_size
from dstack.code.manifest import parse_manifest

if TYPE_CHECKING:
    from conftest import TreeSpec

    MakeTree = Callable[[Path, TreeSpec], None]

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
    "copy-of-train.py": "print('train')\n",
}
OLD_NS = 1_600_000_000_000_000_000  # long ago: hashes of files this old are cached at once


def _age(root: Path) -> None:
    """Files written a moment ago are hashed again next time (see _RACY_NS); age them as a user's are
    (their ctime, which cannot be set, is left to age by a few timestamp ticks)."""
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(OLD_NS + 1, OLD_NS + 1), follow_symlinks=False)
    time.sleep(0.05)


@pytest.fixture
def sample(make_tree: MakeTree, tmp_path: Path) -> Path:
    root = tmp_path / "code"
    make_tree(root, SAMPLE)
    (root / "scripts" / "run.sh").chmod(0o755)
    (root / os.fsdecode(b"raw-\xff.bin")).write_bytes(b"\x00\x01")
    _age(root)
    return root


def _entries(manifest: bytes) -> list[list[object]]:
    return json.loads(manifest)["entries"]


def test_the_manifest_lists_the_tree_and_names_contents_by_their_hash(sample: Path, tmp_path: Path) -> None:
    snapshot = snapshot_code(sample, cache_dir=tmp_path / "cache")
    assert snapshot.code_hash == hashlib.sha256(snapshot.manifest).hexdigest()
    entries = _entries(snapshot.manifest)
    assert [e[0] for e in entries] == [entry.rel_path for entry in walk_files(sample)]
    assert not [
        e for e in entries if str(e[0]).startswith((".git/", "local-notes", "cache.pyc")) or e[0] == ".git"
    ]
    by_path = {e[0]: e for e in entries}
    train = (sample / "train.py").read_bytes()
    assert by_path["train.py"] == ["train.py", "f", 0o644, len(train), hashlib.sha256(train).hexdigest()]
    assert by_path["scripts/run.sh"][2] == 0o755
    assert by_path["link"] == ["link", "l", 0o777, 0, "scripts/run.sh"]
    assert by_path["empty"][:2] == ["empty", "d"]
    assert os.fsdecode(b"raw-\xff.bin") in by_path  # a non-UTF-8 name survives the JSON
    # Equal contents are one content; sizes count every file.
    assert by_path["copy-of-train.py"][4] == by_path["train.py"][4]
    assert len(snapshot.blobs) == snapshot.files - 2  # a symlink and a duplicate content
    parsed = parse_manifest(snapshot.manifest)
    assert parsed.files == snapshot.files == 9
    assert (
        parsed.total_bytes
        == snapshot.size
        == sum((sample / e.rel_path).stat().st_size for e in walk_files(sample) if e.kind == "file")
    )


def test_identical_trees_give_the_same_hash_whatever_their_place_and_times(
    make_tree: MakeTree, tmp_path: Path
) -> None:
    hashes = set()
    for place, when in (("one", OLD_NS), ("elsewhere/two", OLD_NS + 10**15)):
        root = tmp_path / place
        make_tree(root, SAMPLE)
        for path in [root, *root.rglob("*")]:
            os.utime(path, ns=(when, when), follow_symlinks=False)
        hashes.add(snapshot_code(root, cache_dir=tmp_path / "cache").code_hash)
    assert len(hashes) == 1


def test_a_touch_changes_nothing_but_a_changed_byte_does(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = snapshot_code(sample, cache_dir=cache)
    os.utime(sample / "train.py")  # `touch`: a new mtime, the same bytes
    assert snapshot_code(sample, cache_dir=cache).code_hash == before.code_hash
    target = sample / "train.py"
    kept = target.stat()
    target.write_text("print('TRAIN')\n")  # same length, other bytes, mtime put back
    os.utime(target, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    after = snapshot_code(sample, cache_dir=cache)
    assert after.code_hash != before.code_hash
    assert set(after.blobs) - set(before.blobs) == {hashlib.sha256(b"print('TRAIN')\n").hexdigest()}


def test_ignored_files_coming_and_going_do_not_change_the_hash(sample: Path, tmp_path: Path) -> None:
    before = snapshot_code(sample, cache_dir=tmp_path / "cache")
    (sample / "scripts" / "new.pyc").write_text("compiled")
    (sample / "data" / "other.pyc").write_text("compiled")
    assert snapshot_code(sample, cache_dir=tmp_path / "cache").code_hash == before.code_hash
    assert snapshot_code(sample, cache_dir=tmp_path / "fresh-cache").code_hash == before.code_hash


def test_over_the_limit_names_the_biggest_files_and_reads_nothing(
    make_tree: MakeTree, tmp_path: Path, opened_paths: Callable[[], list[str]]
) -> None:
    spec: TreeSpec = {f"f{size}.bin": "x" * size for size in (100, 200, 300, 400, 500, 600)}
    make_tree(tmp_path / "code", {**spec, "ignored.bin": "x" * 5000, ".dstackignore": "ignored.bin\n"})
    cache = tmp_path / "cache"
    opened = opened_paths()
    with pytest.raises(CodeTooLargeError) as caught:
        snapshot_code(tmp_path / "code", limit_bytes=1000, cache_dir=cache)
    assert not [path for path in opened if path.endswith(".bin")]
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
    assert snapshot_code(tmp_path / "code", limit_bytes=1000, cache_dir=cache).files == 3


def test_sizes_read_well() -> None:
    assert [
        format_size(n) for n in (0, 1023, 1024, 1536, 812 * 1024**2, 500 * 1024**2, 3 * 1024**3 // 2)
    ] == ["0 B", "1023 B", "1 KB", "1.5 KB", "812 MB", "500 MB", "1.5 GB"]


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


def test_unchanged_files_are_not_read_again_and_a_touched_one_is_read_alone(
    sample: Path, tmp_path: Path, opened_paths: Callable[[], list[str]]
) -> None:
    cache = tmp_path / "cache"
    code_files = {str(sample / e.rel_path) for e in walk_files(sample) if e.kind == "file"}
    first_opens = opened_paths()
    first = snapshot_code(sample, cache_dir=cache)
    assert code_files <= set(first_opens)  # the first snapshot reads every file...
    second_opens = opened_paths()
    second = snapshot_code(sample, cache_dir=cache)
    ignore_files = {str(sample / ".gitignore")}
    assert not (code_files - ignore_files) & set(second_opens)  # ...the second reads none
    assert (second.code_hash, second.manifest, second.blobs.keys()) == (
        first.code_hash,
        first.manifest,
        first.blobs.keys(),
    )
    os.utime(sample / "train.py", ns=(OLD_NS + 2, OLD_NS + 2))
    third_opens = opened_paths()
    assert snapshot_code(sample, cache_dir=cache).code_hash == first.code_hash
    assert (code_files - ignore_files) & set(third_opens) == {str(sample / "train.py")}


def test_a_file_changed_a_moment_ago_is_hashed_again_next_time(
    sample: Path, tmp_path: Path, opened_paths: Callable[[], list[str]]
) -> None:
    # Its stamp could still change without showing it (same timestamp tick): git's "racily clean".
    cache = tmp_path / "cache"
    (sample / "train.py").write_text("print('fresh')\n")
    snapshot_code(sample, cache_dir=cache)
    opened = opened_paths()
    snapshot_code(sample, cache_dir=cache)
    assert str(sample / "train.py") in opened
    assert str(sample / "scripts" / "run.sh") not in opened


def test_a_damaged_or_lying_cache_never_gives_a_wrong_manifest_silently(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = snapshot_code(sample, cache_dir=cache)
    (cache_file,) = cache.glob("*.hashes.json")
    cache_file.write_text("{not json")
    assert snapshot_code(sample, cache_dir=cache).manifest == first.manifest
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600  # it names the user's files


def test_the_old_archive_cache_is_cleared(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ("a" * 64 + ".tar")).write_text("an archive of the former format")
    (cache / "index.json").write_text("{}")
    snapshot_code(sample, cache_dir=cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".hashes.json")] == []


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
def test_a_file_changing_while_it_is_hashed_is_an_error_not_a_wrong_manifest(
    make_tree: MakeTree, tmp_path: Path, action: Callable[[Path], object]
) -> None:
    root = tmp_path / "code"
    make_tree(root, {"a.txt": "original\n", "zz/trigger": ""})
    rules = _RulesWithSideEffect(root, "zz/trigger", lambda: action(root / "a.txt"))
    with pytest.raises(CodeError, match=r"^The file a\.txt changed while the code was being packed"):
        snapshot_code(root, cache_dir=tmp_path / "cache", rules=rules)


def test_a_file_changing_before_it_is_uploaded_is_an_error(sample: Path, tmp_path: Path) -> None:
    snapshot = snapshot_code(sample, cache_dir=tmp_path / "cache")
    content = hashlib.sha256((sample / "train.py").read_bytes()).hexdigest()
    (sample / "copy-of-train.py").unlink()  # so that train.py is the one place of that content
    snapshot = snapshot_code(sample, cache_dir=tmp_path / "cache")
    (sample / "train.py").write_text("print('edited after the snapshot')\n")
    with pytest.raises(CodeError, match=r"^The file train\.py changed while the code was being uploaded"):
        snapshot.open_blob(content)


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
    message = unprivileged_error(lambda: snapshot_code(root, cache_dir=cache))
    assert message.startswith(f"Cannot read {root / 'secret.key'}")
    assert "add it to .dstackignore" in message


def test_dstack_state_folders_never_travel_even_from_a_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    (home / ".dstack" / "server").mkdir(parents=True)
    (home / ".dstack" / "config.yml").write_text("token: secret")
    (home / "train.py").write_text("print(1)")
    snapshot = snapshot_code(home, cache_dir=home / ".dstack" / "cache" / "code")
    names = [entry[0] for entry in _entries(snapshot.manifest)]
    assert "train.py" in names
    assert not any(str(name).startswith(".dstack") for name in names)


def test_paths_snapshot_places_files_and_folders_where_asked(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path / "data", {"a.txt": "a", "sub/b.txt": "b", "skip.log": "x", ".gitignore": "*.log\n"})
    (tmp_path / "config.json").write_text("{}")
    snapshot = snapshot_paths(
        [(tmp_path / "data", "inputs/data"), (tmp_path / "config.json", "conf/app.json")],
        cache_dir=tmp_path / "cache",
    )
    names = [(e[0], e[1]) for e in _entries(snapshot.manifest)]
    assert names == [
        ("conf", "d"),
        ("conf/app.json", "f"),
        ("inputs", "d"),
        ("inputs/data", "d"),
        ("inputs/data/.gitignore", "f"),
        ("inputs/data/a.txt", "f"),
        ("inputs/data/sub", "d"),
        ("inputs/data/sub/b.txt", "f"),
    ]
    with pytest.raises(CodeError, match="overlaps"):
        snapshot_paths([(tmp_path / "data", "x"), (tmp_path / "config.json", "x/c.json")])
    with pytest.raises(CodeError, match="relative path"):
        snapshot_paths([(tmp_path / "config.json", "../c.json")])


def test_many_megabytes_hashed_by_several_threads_give_the_same_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dstack.code.snapshot as snapshot_module

    root = tmp_path / "big"
    root.mkdir()
    for i in range(6):  # 48 MB: over the size from which files are hashed by several threads
        (root / f"shard-{i}.bin").write_bytes(os.urandom(1024) * (8 * 1024))
    (root / "small.py").write_text("x = 1\n")
    _age(root)
    threaded = snapshot_code(root, cache_dir=tmp_path / "cache-a")
    monkeypatch.setattr(snapshot_module, "_PARALLEL_HASH_BYTES", 1 << 62)
    one_thread = snapshot_code(root, cache_dir=tmp_path / "cache-b")
    assert threaded.manifest == one_thread.manifest
    expected = hashlib.sha256((root / "shard-3.bin").read_bytes()).hexdigest()
    assert next(e for e in _entries(threaded.manifest) if e[0] == "shard-3.bin")[-1] == expected
    # An error while a thread hashes is the snapshot's error, as with one thread.
    monkeypatch.setattr(snapshot_module, "_PARALLEL_HASH_BYTES", 1)
    real = snapshot_module.hash_file

    def failing(path: str, rel_path: str, listed: os.stat_result) -> str:
        if rel_path == "shard-4.bin":
            raise CodeError("Cannot read shard-4.bin (Permission denied)")
        return real(path, rel_path, listed)

    monkeypatch.setattr(snapshot_module, "hash_file", failing)
    with pytest.raises(CodeError, match=r"shard-4\.bin"):
        snapshot_code(root, cache_dir=tmp_path / "cache-c")
