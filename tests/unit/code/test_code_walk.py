"""walk_files and IgnoreRules as the CLI and the --reload watcher use them."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dstack.code import CodeError, IgnoreRules, walk_files

if TYPE_CHECKING:
    from conftest import TreeSpec

    MakeTree = Callable[[Path, TreeSpec], None]


def test_entries_come_sorted_by_the_bytes_of_the_full_path(make_tree: MakeTree, tmp_path: Path) -> None:
    # "." (0x2e) and "-" (0x2d) sort before "/" (0x2f): a sibling file lands between a directory
    # entry and its contents.
    make_tree(
        tmp_path,
        {"foo/bar": "", "foo.py": "", "foo-x": "", "foo/baz/q": "", "Z": "", "a b": "", "é": "", "foo0": ""},
    )
    paths = [entry.rel_path for entry in walk_files(tmp_path)]
    assert paths == sorted(paths, key=os.fsencode)
    assert paths == ["Z", "a b", "foo", "foo-x", "foo.py", "foo/bar", "foo/baz", "foo/baz/q", "foo0", "é"]


def test_entries_describe_files_dirs_and_symlinks(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {"run.sh": "echo hi\n", "empty": None, "link": ("symlink", "run.sh"), "far": ("symlink", "/etc")},
    )
    (tmp_path / "run.sh").chmod(0o750)
    entries = {entry.rel_path: entry for entry in walk_files(tmp_path)}
    script = entries["run.sh"]
    assert (script.kind, script.size, script.mode, script.link_target) == ("file", 8, 0o750, None)
    assert script.mtime_ns == (tmp_path / "run.sh").stat().st_mtime_ns
    assert entries["empty"].kind == "dir"
    assert (entries["link"].kind, entries["link"].link_target) == ("symlink", "run.sh")
    # A symlink to a directory is an entry of its own and is never followed.
    assert (entries["far"].kind, entries["far"].link_target) == ("symlink", "/etc")
    assert not any(path.startswith("far/") for path in entries)


def test_sockets_and_fifos_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    # AF_UNIX paths are short: bind inside a short temporary directory, then move the socket.
    with tempfile.TemporaryDirectory(dir="/tmp") as short, socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.path.join(short, "s"))
        os.rename(os.path.join(short, "s"), tmp_path / "sock")
        assert [entry.rel_path for entry in walk_files(tmp_path)] == ["kept.txt"]


def test_git_dir_and_files_are_never_listed(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".git/HEAD": "ref", ".gitignore": "!.git\n", "sub/.git": "gitdir: x", "sub/a": ""})
    assert [entry.rel_path for entry in walk_files(tmp_path)] == [".gitignore", "sub", "sub/a"]


def test_dstackignore_works_outside_git(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(
        tmp_path, {".dstackignore": "data/\n*.ckpt\n", "data/big.bin": "", "m.ckpt": "", "train.py": ""}
    )
    assert [entry.rel_path for entry in walk_files(tmp_path)] == [".dstackignore", "train.py"]


def test_ignored_directories_are_not_entered(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".gitignore": "venv/\n", "venv/lib/x.py": "", "main.py": ""})

    class RecordingRules(IgnoreRules):
        asked: list[str] = []

        def is_ignored_in(self, parent_dir: str, name: str, is_dir: bool) -> bool:
            self.asked.append(f"{parent_dir}/{name}" if parent_dir else name)
            return super().is_ignored_in(parent_dir, name, is_dir)

    rules = RecordingRules(tmp_path)
    assert [entry.rel_path for entry in walk_files(tmp_path, rules)] == [".gitignore", "main.py"]
    assert sorted(rules.asked) == [".gitignore", "main.py", "venv"]


def test_missing_root_is_a_code_error(tmp_path: Path) -> None:
    with pytest.raises(CodeError, match="does not exist"):
        list(walk_files(tmp_path / "nope"))


def test_unreadable_directory_is_a_code_error_naming_it(
    reachable_tmp: Path, unprivileged_error: Callable[[Callable[[], object]], str]
) -> None:
    (reachable_tmp / "locked").mkdir()
    (reachable_tmp / "locked" / "a").write_text("x")
    (reachable_tmp / "locked").chmod(0)
    message = unprivileged_error(lambda: list(walk_files(reachable_tmp)))
    assert message.startswith("Cannot read the directory ")
    assert str(reachable_tmp / "locked") in message


# --- IgnoreRules directly ---------------------------------------------------------------------


def test_is_ignored_covers_paths_inside_ignored_directories(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".gitignore": "out/\n!out/keep\n"})
    rules = IgnoreRules(tmp_path)
    # The paths need not exist: the watcher asks about deleted ones too.
    assert rules.is_ignored("out", is_dir=True)
    assert rules.is_ignored("out/keep", is_dir=False)
    assert rules.is_ignored("out/a/b/c.txt", is_dir=False)
    assert not rules.is_ignored("src/out", is_dir=False)
    assert rules.is_ignored("src/out", is_dir=True)
    assert rules.is_ignored(".git/config", is_dir=False)
    assert not rules.is_ignored("", is_dir=True)


def test_is_ignored_in_also_respects_ignored_ancestors(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".gitignore": "out/\n!keep/\n"})
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored_in("out", "keep", is_dir=True)
    assert rules.is_ignored("out/keep/file", is_dir=False)
    assert not rules.is_ignored_in("src", "keep", is_dir=True)


def test_unreadable_ignore_file_is_an_error_not_silently_skipped(
    reachable_tmp: Path, unprivileged_error: Callable[[Callable[[], object]], str]
) -> None:
    (reachable_tmp / "secret.env").write_text("TOKEN=1")
    (reachable_tmp / ".gitignore").write_text("secret.env\n")
    (reachable_tmp / ".gitignore").chmod(0)
    message = unprivileged_error(lambda: list(walk_files(reachable_tmp)))
    assert message.startswith(f"Cannot read the ignore file {reachable_tmp / '.gitignore'}")


def test_is_ignored_normalises_and_refuses_escaping_paths(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".gitignore": "*.log\n"})
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored("./sub//x.log", is_dir=False)
    assert rules.is_ignored("sub/", is_dir=True) is False
    with pytest.raises(ValueError):
        rules.is_ignored("../x.log", is_dir=False)
    with pytest.raises(ValueError):
        rules.is_ignored("/etc/passwd", is_dir=False)


def test_invalidate_picks_up_changed_ignore_files(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".gitignore": "*.log\n", "sub/.dstackignore": "", "sub/deeper/x": ""})
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored("a.log", is_dir=False)
    assert not rules.is_ignored("sub/deeper", is_dir=True)
    # Rules are cached: an edit is not seen until the watcher says which directory changed.
    (tmp_path / ".gitignore").write_text("*.txt\n")
    (tmp_path / "sub" / ".dstackignore").write_text("deeper/\n")
    assert rules.is_ignored("a.log", is_dir=False)
    rules.invalidate("")
    assert not rules.is_ignored("a.log", is_dir=False)
    assert rules.is_ignored("a.txt", is_dir=False)
    assert not rules.is_ignored("sub/deeper/x", is_dir=False)
    rules.invalidate("sub")
    assert rules.is_ignored("sub/deeper/x", is_dir=False)


def test_invalidate_reloads_info_exclude(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".git/info/exclude": "a\n"})
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored("a", is_dir=False)
    (tmp_path / ".git" / "info" / "exclude").write_text("b\n")
    rules.invalidate(".git/info")
    assert not rules.is_ignored("a", is_dir=False)
    assert rules.is_ignored("b", is_dir=False)


def test_info_exclude_is_only_read_from_a_git_directory(make_tree: MakeTree, tmp_path: Path) -> None:
    make_tree(tmp_path, {".git": "gitdir: ../elsewhere", "a": ""})
    assert not IgnoreRules(tmp_path).is_ignored("a", is_dir=False)
