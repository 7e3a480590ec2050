"""Listing the code: every entry under the root that is not ignored, in a stable order."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from dstack.code.errors import CodeError
from dstack.code.ignore import IgnoreRules

EntryKind = Literal["file", "dir", "symlink"]


class CodeEntry(NamedTuple):
    rel_path: str  # "/"-separated, relative to the root
    kind: EntryKind
    size: int  # bytes of content for a file, 0 otherwise
    mode: int  # permission bits (stat.S_IMODE)
    mtime_ns: int
    link_target: str | None  # for a symlink, where it points (never followed)


class ScannedEntry(NamedTuple):
    """An entry with the full lstat taken while listing, so packing can tell if it changed since."""

    entry: CodeEntry
    status: os.stat_result


# A directory listing, in order: entries to yield, and (as a str) directories to descend into.
_Listing = list[ScannedEntry | str]


def walk_files(root: Path, rules: IgnoreRules | None = None) -> Iterator[CodeEntry]:
    """Every non-ignored entry under `root`, sorted by the bytes of its "/"-joined path; ignored
    directories are pruned unread, symlinks are not followed, sockets/fifos/devices are skipped."""
    for scanned in scan_tree(root, rules):
        yield scanned.entry


def scan_tree(root: Path, rules: IgnoreRules | None = None) -> Iterator[ScannedEntry]:
    """walk_files with each entry's lstat result."""
    if rules is None:
        rules = IgnoreRules(root)
    root_dir = os.fspath(root)
    if not root.is_dir():
        raise CodeError(f"The code directory {root} does not exist or is not a directory")
    pending = [iter(_list_directory(root_dir, "", rules))]
    while pending:
        item = next(pending[-1], None)
        if item is None:
            pending.pop()
        elif isinstance(item, str):
            pending.append(iter(_list_directory(root_dir, item, rules)))
        else:
            yield item


def _list_directory(root_dir: str, rel_dir: str, rules: IgnoreRules) -> _Listing:
    """The directory's entries and descents, ordered so the whole walk follows full-path order.

    A directory "a" sorts as "a" but its contents as "a/...", so a sibling file "a.txt" (b"." <
    b"/") lands between the directory and its contents: each directory yields two keys.
    """
    directory = f"{root_dir}{os.sep}{rel_dir}" if rel_dir else root_dir
    try:
        with os.scandir(directory) as listing:
            children = list(listing)
    except (FileNotFoundError, NotADirectoryError):
        return []  # removed while we walked: nothing left to pack in it
    except OSError as exc:
        raise CodeError(
            f"Cannot read the directory {directory} ({exc.strerror}); "
            "fix its permissions or add it to .dstackignore"
        ) from None
    keyed: list[tuple[bytes, ScannedEntry | str]] = []
    for child in children:
        scanned = _scan_child(child, rel_dir, rules)
        if scanned is None:
            continue
        key = os.fsencode(child.name)
        keyed.append((key, scanned))
        if scanned.entry.kind == "dir":
            keyed.append((key + b"/", scanned.entry.rel_path))
    keyed.sort(key=lambda pair: pair[0])
    return [item for _, item in keyed]


def _scan_child(child: os.DirEntry[str], rel_dir: str, rules: IgnoreRules) -> ScannedEntry | None:
    try:
        looks_like_dir = child.is_dir(follow_symlinks=False)  # d_type: no syscall on most systems
    except OSError:
        return None
    if rules.is_ignored_in(rel_dir, child.name, looks_like_dir):
        return None
    try:
        status = child.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CodeError(f"Cannot read {child.path} ({exc.strerror}); fix its permissions") from None
    is_dir = stat.S_ISDIR(status.st_mode)
    if is_dir != looks_like_dir and rules.is_ignored_in(rel_dir, child.name, is_dir):
        return None  # replaced by another kind between listing and stat
    rel_path = f"{rel_dir}/{child.name}" if rel_dir else child.name
    mode = stat.S_IMODE(status.st_mode)
    if is_dir:
        return ScannedEntry(CodeEntry(rel_path, "dir", 0, mode, status.st_mtime_ns, None), status)
    if stat.S_ISREG(status.st_mode):
        entry = CodeEntry(rel_path, "file", status.st_size, mode, status.st_mtime_ns, None)
        return ScannedEntry(entry, status)
    if stat.S_ISLNK(status.st_mode):
        try:
            target = os.readlink(child)  # noqa: PTH115 (a DirEntry, not a str path)
        except FileNotFoundError:
            return None
        return ScannedEntry(CodeEntry(rel_path, "symlink", 0, mode, status.st_mtime_ns, target), status)
    return None  # sockets, fifos, devices: not code
