"""Shared helpers for the code-packing tests: building trees and asking real git what it ignores."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from dstack.code import CodeError, IgnoreRules, walk_files

# A tree spec maps "/"-separated paths to file contents (str or bytes), None for an empty directory,
# or ("symlink", target). Parent directories are created as needed.
TreeSpec = Mapping[str, "str | bytes | tuple[str, str] | None"]


def build_tree(root: Path, spec: TreeSpec) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel_path, content in spec.items():
        path = root / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, tuple):
            path.symlink_to(content[1])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


class GitOracle:
    """Runs the real git, isolated from the user's and the system's configuration."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "xdg"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
        }

    def run(self, repo: Path, *args: str) -> bytes:
        result = subprocess.run(
            ["git", "-C", str(repo), *args],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def init(self, repo: Path) -> None:
        repo.mkdir(parents=True, exist_ok=True)
        self.run(repo, "init", "-q", "--template=")

    def listed_files(self, repo: Path) -> set[str]:
        """What `git ls-files --cached --others --exclude-standard` lists (nothing is staged here)."""
        out = self.run(repo, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
        return {os.fsdecode(name) for name in out.split(b"\0") if name}

    def assert_agrees(self, ours: Path, twin: Path | None = None) -> set[str]:
        """Git's listing of `twin` (default: `ours` itself) equals the files walk_files yields for
        `ours` and the files IgnoreRules.is_ignored keeps; returns that set."""
        expected = self.listed_files(twin if twin is not None else ours)
        assert walked_files(ours) == expected
        assert files_not_ignored(ours) == expected
        return expected


def walked_files(root: Path) -> set[str]:
    """Files and symlinks that walk_files yields: what git's listing is compared with."""
    return {entry.rel_path for entry in walk_files(root) if entry.kind != "dir"}


def files_not_ignored(root: Path) -> set[str]:
    """Same question through IgnoreRules.is_ignored on every path of the tree (the watcher's way)."""
    rules = IgnoreRules(root)
    kept = set()
    for directory, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]:
            rel_path = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not rules.is_ignored(rel_path, is_dir=False):
                kept.add(rel_path)
    return kept


@pytest.fixture
def make_tree() -> Callable[[Path, TreeSpec], None]:
    return build_tree


@pytest.fixture
def git(tmp_path_factory: pytest.TempPathFactory) -> GitOracle:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return GitOracle(tmp_path_factory.mktemp("git-home"))


def _unprivileged_error(action: Callable[[], object]) -> str:
    """Run action in a forked child as an ordinary user (as root, permission bits would not stop
    anything) and return the CodeError message it raised ("" if it raised none)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(reader)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            action()
        except CodeError as exc:
            os.write(writer, str(exc).encode())
        except BaseException as exc:
            os.write(writer, f"unexpected {exc!r}".encode())
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message
    return message


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A temporary directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        root = Path(scratch)
        root.chmod(0o755)
        yield root
        for path in root.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(stat.S_IRWXU)


@pytest.fixture
def unprivileged_error() -> Callable[[Callable[[], object]], str]:
    return _unprivileged_error
