"""Which paths under the code root stay home: `.gitignore`, `.dstackignore` and `.git/info/exclude`.

Precedence follows git: the ignore files of the deepest directory that has a matching pattern win,
then shallower ones, then `.git/info/exclude`; inside one directory `.dstackignore` is read after
`.gitignore`, so it has the last word. A path inside an ignored directory is ignored whatever the
patterns say about it (git never looks inside an excluded directory).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from dstack.code.errors import CodeError
from dstack.code.patterns import PatternList, parse_ignore_file

GITIGNORE = ".gitignore"
DSTACKIGNORE = ".dstackignore"
GIT_DIR = ".git"

# Each entry: (length of the directory's encoded path plus its slash, that directory's patterns).
_Chain = tuple[tuple[int, PatternList], ...]


class IgnoreRules:
    """Lazily loaded, cached ignore rules for one code root; cheap enough to ask per watcher event."""

    def __init__(self, root: Path, *, always_ignored: frozenset[str] = frozenset()) -> None:
        """`always_ignored`: paths relative to root left out whatever the ignore files say (e.g. dstack's
        own state folder, when someone packs their home directory)."""
        self.root = root
        self._always = frozenset(_normalise(p) for p in always_ignored)
        self._patterns: dict[str, PatternList | None] = {}
        self._chains: dict[str, _Chain] = {}
        self._ignored_dirs: dict[str, bool] = {}
        self._exclude: PatternList | None = None
        self._exclude_loaded = False

    def is_ignored(self, rel_path: str, is_dir: bool) -> bool:
        """Whether the path ("/"-separated, relative to the root) is left out of the code."""
        path = _normalise(rel_path)
        if not path:
            return False
        parent, _, name = path.rpartition("/")
        return self.is_ignored_in(parent, name, is_dir)

    def is_ignored_in(self, parent_dir: str, name: str, is_dir: bool) -> bool:
        """is_ignored for the entry `name` of the directory `parent_dir` (already normalised), the
        form a tree walk has at hand; the parent's own verdict is a cached lookup by then."""
        if parent_dir and self._is_dir_ignored(parent_dir):
            return True
        return self._decide(parent_dir, name, is_dir)

    def invalidate(self, rel_dir: str) -> None:
        """An ignore file in `rel_dir` changed (or `.git/info/exclude`, for ".git/info" or ".git")."""
        directory = _normalise(rel_dir)
        self._patterns.pop(directory, None)
        if directory in ("", GIT_DIR, f"{GIT_DIR}/info"):
            self._exclude_loaded = False
        # Decisions below that directory depend on it; dropping all of them is simpler and cheap,
        # since the parsed patterns of the other directories stay cached.
        self._chains.clear()
        self._ignored_dirs.clear()

    def _decide(self, parent_dir: str, name: str, is_dir: bool) -> bool:
        """The verdict for an entry of a directory known not to be ignored."""
        path = f"{parent_dir}/{name}" if parent_dir else name
        ignored = name == GIT_DIR or path in self._always or self._last_verdict(path, parent_dir, is_dir)
        if is_dir:
            self._ignored_dirs[path] = ignored
        return ignored

    def _is_dir_ignored(self, rel_dir: str) -> bool:
        known = self._ignored_dirs.get(rel_dir)
        if known is not None:
            return known
        undecided = []
        directory = rel_dir
        while directory and directory not in self._ignored_dirs:
            undecided.append(directory)
            directory = directory.rpartition("/")[0]
        ignored = self._ignored_dirs[directory] if directory else False
        for directory in reversed(undecided):
            if ignored:
                self._ignored_dirs[directory] = True
            else:
                parent, _, name = directory.rpartition("/")
                ignored = self._decide(parent, name, True)
        return ignored

    def _last_verdict(self, path: str, parent_dir: str, is_dir: bool) -> bool:
        encoded = os.fsencode(path)
        for prefix_length, patterns in self._chain(parent_dir):
            verdict = patterns.verdict(encoded[prefix_length:], is_dir)
            if verdict is not None:
                return verdict
        return False

    def _chain(self, rel_dir: str) -> _Chain:
        """The pattern lists that apply to entries of rel_dir, deepest directory first."""
        chain = self._chains.get(rel_dir)
        if chain is not None:
            return chain
        missing = []
        directory = rel_dir
        while directory not in self._chains:
            missing.append(directory)
            if not directory:
                break
            directory = directory.rpartition("/")[0]
        for directory in reversed(missing):
            if directory:
                inherited = self._chains[directory.rpartition("/")[0]]
                prefix_length = len(os.fsencode(directory)) + 1
            else:
                exclude = self._info_exclude()
                inherited = ((0, exclude),) if exclude else ()
                prefix_length = 0
            own = self._directory_patterns(directory)
            self._chains[directory] = ((prefix_length, own), *inherited) if own else inherited
        return self._chains[rel_dir]

    def _directory_patterns(self, rel_dir: str) -> PatternList | None:
        if rel_dir in self._patterns:
            return self._patterns[rel_dir]
        directory = self.root / rel_dir
        # git refuses a symlinked .gitignore inside the tree; doing the same keeps what we pack
        # identical to what git sees. .dstackignore is ours: a symlink to a shared one is honoured.
        gitignore = _read_ignore_file(directory / GITIGNORE, follow_symlinks=False)
        dstackignore = _read_ignore_file(directory / DSTACKIGNORE, follow_symlinks=True)
        patterns = PatternList([*parse_ignore_file(gitignore), *parse_ignore_file(dstackignore)])
        self._patterns[rel_dir] = patterns if patterns else None
        return self._patterns[rel_dir]

    def _info_exclude(self) -> PatternList | None:
        if not self._exclude_loaded:
            git_dir = self.root / GIT_DIR
            data = b""
            if git_dir.is_dir():
                data = _read_ignore_file(git_dir / "info" / "exclude", follow_symlinks=True)
            patterns = PatternList(parse_ignore_file(data))
            self._exclude = patterns if patterns else None
            self._exclude_loaded = True
        return self._exclude


def _read_ignore_file(path: Path, *, follow_symlinks: bool) -> bytes:
    """The file's bytes; empty when it is absent, not a regular file, or a refused symlink."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    if not follow_symlinks:
        if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():
            return b""
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR):
            return b""
        raise CodeError(f"Cannot read the ignore file {path} ({exc.strerror}); fix its permissions") from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return b""
        try:
            return file.read()
        except OSError as exc:
            raise CodeError(f"Cannot read the ignore file {path} ({exc.strerror})") from None


def _normalise(rel_path: str) -> str:
    """ "a/./b/" -> "a/b"; refuses absolute paths and ".." so a lookup never leaves the root."""
    if rel_path.startswith("/"):
        raise ValueError(f"Expected a path relative to the code root, got {rel_path!r}")
    parts = [part for part in rel_path.split("/") if part and part != "."]
    if ".." in parts:
        raise ValueError(f"Expected a path inside the code root, got {rel_path!r}")
    return "/".join(parts)
