"""From the paths the watcher reported to the changes to send: compare what is on disk now with the
index of what the task holds. Events only say where to look; the disk says what to send, so repeated,
reordered or merged events (a save that writes, renames and chmods) all end in the same batch."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dstack.cli.reload.tree import Entry, Index, entry_of, join, scan
from dstack.code.errors import CodeError
from dstack.code.ignore import DSTACKIGNORE, GIT_DIR, GITIGNORE, IgnoreRules

IGNORE_FILES = (GITIGNORE, DSTACKIGNORE)
GIT_EXCLUDE = f"{GIT_DIR}/info/exclude"


@dataclass
class Changes:
    puts: dict[str, Entry] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    forget: set[str] = field(default_factory=set)  # now ignored: the index lets go, the task keeps them

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes or self.forget)

    def ordered_deletes(self) -> list[str]:
        """Deletions without those inside a deleted folder (one rmtree does them)."""
        kept: list[str] = []
        for rel in sorted(self.deletes):
            if not kept or not rel.startswith(kept[-1] + "/"):
                kept.append(rel)
        return kept

    def ordered_puts(self) -> list[tuple[str, Entry]]:
        """Parents before their children (a prefix sorts first)."""
        return sorted(self.puts.items())


def relative_path(root: str, path: str) -> str | None:
    """The "/"-separated path under root, "" for root itself; None outside it."""
    if path == root:
        return ""
    prefix = root.rstrip(os.sep) + os.sep
    if not path.startswith(prefix):
        return None
    return path[len(prefix) :].replace(os.sep, "/")


def invalidate_rules(rules: IgnoreRules, dirty: Iterable[str]) -> set[str]:
    """Drop the cached rules of changed ignore files; returns the folders to look at again in full,
    since a changed ignore file may bring paths back into the code."""
    rescan: set[str] = set()
    for rel in dirty:
        folder, _, name = rel.rpartition("/")
        if name in IGNORE_FILES:
            rules.invalidate(folder)
            rescan.add(folder)
        elif rel == GIT_EXCLUDE:
            rules.invalidate(f"{GIT_DIR}/info")
            rescan.add("")
    return rescan


def compute(
    root: str, index: Index, dirty: Iterable[str], rules: IgnoreRules, warn: Callable[[str], None]
) -> Changes:
    """What to send for the dirty paths ("" stands for the whole tree)."""
    changes = Changes()
    real_root = os.path.realpath(root)
    for rel in sorted(set(dirty)):
        if rel == GIT_DIR or rel.startswith(GIT_DIR + "/") or _through_symlink(root, real_root, rel):
            continue
        entry = entry_of(join(root, rel))
        if entry is None:
            if rel and (index.get(rel) is not None or index.below(rel)):
                changes.deletes.add(rel)
            continue
        try:
            if rel and rules.is_ignored(rel, entry.kind == "dir"):
                continue
        except CodeError as e:
            warn(str(e))
            continue
        if rel and not _sent(index, rel, entry):
            changes.puts[rel] = entry
        if entry.kind == "dir":
            _compare_folder(root, rel, index, rules, changes, warn)
    return changes


def _through_symlink(root: str, real_root: str, rel: str) -> bool:
    """A path seen through a symlinked folder: the symlink itself travels, never what it points to."""
    parent = rel.rpartition("/")[0]
    return bool(parent) and os.path.realpath(join(root, parent)) != join(real_root, parent)


def _sent(index: Index, rel: str, entry: Entry) -> bool:
    known = index.get(rel)
    return known is not None and known.same_as(entry)


def _compare_folder(
    root: str, rel_dir: str, index: Index, rules: IgnoreRules, changes: Changes, warn: Callable[[str], None]
) -> None:
    """A folder event (created, moved in, or a rescan): compare its whole subtree, stat by stat."""
    seen: set[str] = set()
    for rel, entry in scan(root, rel_dir, rules, warn):
        seen.add(rel)
        if not _sent(index, rel, entry):
            changes.puts[rel] = entry
    for rel in index.below(rel_dir):
        if rel in seen:
            continue
        if entry_of(join(root, rel)) is None:
            changes.deletes.add(rel)
        else:
            changes.forget.add(rel)  # still there but ignored now: ignored paths never travel
