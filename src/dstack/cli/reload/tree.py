"""The local side of --reload: what an entry of the code root looks like, listing a subtree with the
ignore rules, and the index of what the task's copy holds as far as this CLI knows."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import NamedTuple

from dstack.code.errors import CodeError
from dstack.code.ignore import IgnoreRules


class Entry(NamedTuple):
    kind: str  # "file", "dir" or "symlink"
    size: int
    mode: int  # permission bits
    mtime_ns: int
    ctime_ns: int
    ino: int
    target: str | None  # a symlink's target

    def same_as(self, other: Entry) -> bool:
        """Whether the task's copy of `other` is still good for this entry, as far as lstat can tell."""
        if self.kind != other.kind:
            return False
        if self.kind == "dir":
            return self.mode == other.mode
        if self.kind == "symlink":
            return self.target == other.target
        # ctime and inode catch rewrites that keep the size and mtime (or restore an old mtime).
        return self[1:6] == other[1:6]


def entry_from_stat(status: os.stat_result, path: str) -> Entry | None:
    """The entry for an lstat result; None for sockets, fifos and devices, which are not code."""
    mode = status.st_mode
    if stat.S_ISREG(mode):
        kind, target = "file", None
    elif stat.S_ISDIR(mode):
        kind, target = "dir", None
    elif stat.S_ISLNK(mode):
        try:
            kind, target = "symlink", os.readlink(path)  # noqa: PTH115 (str paths: cheaper)
        except OSError:
            return None
    else:
        return None
    size = status.st_size if kind == "file" else 0
    return Entry(
        kind, size, stat.S_IMODE(mode), status.st_mtime_ns, status.st_ctime_ns, status.st_ino, target
    )


def join(root: str, rel: str) -> str:
    """root + a "/"-separated relative path (str paths: the watcher's hot path avoids Path objects)."""
    return f"{root}{os.sep}{rel}" if rel else root


def entry_of(path: str) -> Entry | None:
    """The entry at path (never following a symlink), or None if there is none."""
    try:
        return entry_from_stat(os.lstat(path), path)
    except OSError:
        return None


def scan(
    root: str, rel_dir: str, rules: IgnoreRules, warn: Callable[[str], None]
) -> Iterator[tuple[str, Entry]]:
    """Every non-ignored entry below rel_dir ("" for the whole root), not rel_dir itself; ignored folders
    are not entered and symlinks are not followed."""
    pending = [rel_dir]
    while pending:
        current = pending.pop()
        folder = join(root, current)
        try:
            with os.scandir(folder) as listing:
                children = list(listing)
        except FileNotFoundError:
            continue
        except OSError as e:
            warn(f"cannot read the folder {current or '.'} ({e.strerror}); its changes are not sent")
            continue
        for child in children:
            try:
                is_dir = child.is_dir(follow_symlinks=False)
                if rules.is_ignored_in(current, child.name, is_dir):
                    continue
                entry = entry_from_stat(child.stat(follow_symlinks=False), child.path)
            except FileNotFoundError:
                continue
            except (OSError, CodeError) as e:
                warn(_reason(e, f"{current}/{child.name}" if current else child.name))
                continue
            if entry is None:
                continue
            rel = f"{current}/{child.name}" if current else child.name
            yield rel, entry
            if entry.kind == "dir":
                pending.append(rel)


def _reason(error: Exception, rel: str) -> str:
    if isinstance(error, CodeError):
        return str(error)
    return f"cannot read {rel} ({getattr(error, 'strerror', None) or error}); it is not sent"


class Index:
    """What the task's copy holds, as far as this CLI knows: path -> the local entry it was sent from."""

    def __init__(self, entries: dict[str, Entry] | None = None) -> None:
        self.entries: dict[str, Entry] = dict(entries or {})

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, rel: str) -> Entry | None:
        return self.entries.get(rel)

    def below(self, rel_dir: str) -> list[str]:
        """The known paths under rel_dir ("" for all)."""
        if not rel_dir:
            return list(self.entries)
        prefix = rel_dir + "/"
        return [path for path in self.entries if path.startswith(prefix)]

    # A folder's children are known only while the folder is: every path's parents come first.

    def put(self, rel: str, entry: Entry) -> None:
        previous = self.entries.get(rel)
        if previous is not None and previous.kind == "dir" and entry.kind != "dir":
            self.forget_below(rel)  # a file or symlink took the place of a folder
        self.entries[rel] = entry

    def remove(self, rel: str) -> None:
        previous = self.entries.pop(rel, None)
        if previous is not None and previous.kind == "dir":
            self.forget_below(rel)

    def forget_below(self, rel: str) -> None:
        for path in self.below(rel):
            del self.entries[path]
