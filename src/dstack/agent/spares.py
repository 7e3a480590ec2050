"""Spare copies of recent code trees, so that a job's folder is ready the moment the job starts.

A job's folder is its own copy of the code (never links into the store: the job may write to it). For a
big repository that copy is most of a job's start: thousands of files created, hundreds of MB copied.
So the agent keeps pristine copies of the latest trees: one made in a background thread when a job took
the last one, and the folders of finished jobs, given back (`recycle`) once whatever their job changed in
them is undone. The next job of the same code gets one with a rename; a job of slightly different code
(one file edited) gets the most recent spare patched: only the entries that differ are rewritten. So
runs of a big repository one after another copy nothing, however quickly they follow each other.

What a job changed is told by each entry's status as it was handed over: a file written, truncated,
chmodded, touched, linked or replaced has a new ctime or inode (ctime cannot be set by a process), an
entry added is not in the record, a folder is compared by kind, mode and owner. A changed or added
entry is removed and what belongs there is made again; a folder whose kind, mode or owner changed, or
a tree that cannot be read, is not reused at all.

Spares are the agent's own (no job ever saw them, or what a job left was undone), at most MAX_SPARES of
them, each at most MAX_SPARE_BYTES of files; they cost that much disk beside the store.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from dstack.agent.fsutil import make_private_dir
from dstack.agent.unpack import (
    DIR,
    FILE,
    Item,
    UnpackError,
    build_tree,
    create_item,
    remove_path,
    set_folder_modes,
)

log = logging.getLogger(__name__)

MAX_SPARES = 2
MAX_SPARE_BYTES = 2 * 1024**3
_MAX_LENT = 4096  # trees handed to jobs and not given back yet that are remembered
_WAIT_FOR_BUILD_SECONDS = 60.0  # a job waits this long at most for a spare being built
_BUILDING_PREFIX = ".building-"
_RETURNED_PREFIX = ".returned-"

Status = Tuple[int, ...]  # an entry's status as recorded (see _status)


@dataclass
class _Tree:
    code_hash: str
    items: List[Item]
    statuses: Dict[str, Status]  # by the entry's relative path
    root: Status  # the tree's own folder's


class SpareTrees:
    def __init__(self, folder: Path, content: Callable[[str], Path]) -> None:
        self._folder = folder
        self._content = content
        make_private_dir(folder)
        for leftover in folder.iterdir():  # from an earlier agent: cheaper to drop than to trust
            shutil.rmtree(leftover, ignore_errors=True)
        self._changed = threading.Condition()
        self._spares: List[Tuple[Path, _Tree]] = []  # most recent last
        self._building: Optional[str] = None
        self._wanted: Optional[Tuple[str, List[Item]]] = None
        self._returned: List[Tuple[Path, _Tree]] = []  # finished jobs' folders, to be checked
        self._lent: Dict[Tuple[int, int], _Tree] = {}  # trees jobs hold, by their folder's device and inode
        self._worker: Optional[threading.Thread] = None
        self._serial = 0

    def take(self, code_hash: str, items: List[Item], destination: Path) -> bool:
        """Move a spare of this code to `destination` (patching the most recent spare if there is none of
        it); False if there is no spare to use."""
        deadline = time.monotonic() + _WAIT_FOR_BUILD_SECONDS
        with self._changed:
            while time.monotonic() < deadline and self._none_yet(code_hash):
                self._changed.wait(deadline - time.monotonic())
            chosen = next((s for s in reversed(self._spares) if s[1].code_hash == code_hash), None)
            if chosen is None and self._spares:
                chosen = self._spares[-1]
            if chosen is None:
                return False
            self._spares.remove(chosen)
        path, tree = chosen
        try:
            if tree.code_hash != code_hash:
                statuses = patch_tree(tree.items, items, str(path), self._content, tree.statuses)
                tree = _Tree(code_hash, items, statuses, tree.root)
            if destination.exists():
                destination.rmdir()  # the job's empty folder, replaced by the spare
            os.rename(path, destination)
        except (OSError, UnpackError) as e:
            log.warning("A spare copy of the code could not be used (%s); building the folder instead", e)
            shutil.rmtree(path, ignore_errors=True)
            return False
        self._lend(destination, tree)
        return True

    def offer(self, code_hash: str, items: List[Item]) -> None:
        """Ask for a spare of this code, built in the background (the latest ask wins), unless a spare is
        left to patch, or one is being made or given back (it will be, once there)."""
        if sum(item.size for item in items if item.kind == FILE) > MAX_SPARE_BYTES:
            return
        with self._changed:
            if self._spares or self._returned or self._building is not None:
                return
            self._wanted = (code_hash, items)
            self._start_worker()

    def recycle(self, folder: Path) -> bool:
        """A finished job's code folder, about to be removed: take it back as a spare if it was one (what
        the job changed in it is undone in the background). False if it is not ours to take."""
        try:
            status = os.lstat(folder)
        except OSError:
            return False
        with self._changed:
            tree = self._lent.pop((status.st_dev, status.st_ino), None)
            if tree is None:
                return False
            self._serial += 1
            path = self._folder / f"{_RETURNED_PREFIX}{self._serial}"
        try:
            os.rename(folder, path)
        except OSError:
            return False  # another file system: it goes with the job's folder
        with self._changed:
            self._returned.append((path, tree))
            self._start_worker()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no spare is being made or given back (for tests); False if still busy at `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._building is not None or self._returned or self._wanted is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _none_yet(self, code_hash: str) -> bool:
        """Whether a job of this code should wait: no spare of it, and one is on its way (or none at all
        is there to patch while one is on its way)."""
        if any(tree.code_hash == code_hash for _, tree in self._spares):
            return False
        coming = self._building is not None or bool(self._returned)
        mine = self._building == code_hash or any(tree.code_hash == code_hash for _, tree in self._returned)
        return coming and (mine or not self._spares)

    def _lend(self, destination: Path, tree: _Tree) -> None:
        try:
            status = os.lstat(destination)
        except OSError:
            return
        with self._changed:
            self._lent[(status.st_dev, status.st_ino)] = tree
            while len(self._lent) > _MAX_LENT:
                del self._lent[next(iter(self._lent))]

    def _start_worker(self) -> None:
        """Under the lock: make sure the background thread runs."""
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="spare-trees", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._changed:
                returned: Optional[_Tree] = None
                wanted: Optional[Tuple[str, List[Item]]] = None
                if self._returned:
                    path, returned = self._returned.pop(0)
                    self._building = returned.code_hash
                elif self._wanted is not None:
                    wanted, self._wanted = self._wanted, None
                    self._building = wanted[0]
                    self._serial += 1
                    path = self._folder / f"{_BUILDING_PREFIX}{self._serial}"
                else:
                    return
            if returned is not None:
                ready = self._restore(path, returned)
            else:
                assert wanted is not None
                ready = self._build(path, *wanted)
            with self._changed:
                self._building = None
                if ready is not None:
                    self._serial += 1
                    final = self._folder / f"{ready.code_hash[:32]}-{self._serial}"
                    try:
                        os.rename(path, final)
                        self._spares.append((final, ready))
                    except OSError:
                        ready = None
                gone = self._spares[:-MAX_SPARES] if len(self._spares) > MAX_SPARES else []
                self._spares = self._spares[len(gone) :]
                self._changed.notify_all()
            for old_path, _ in gone:
                shutil.rmtree(old_path, ignore_errors=True)
            if ready is None:
                shutil.rmtree(path, ignore_errors=True)

    def _build(self, path: Path, code_hash: str, items: List[Item]) -> Optional[_Tree]:
        try:
            path.mkdir()
            build_tree(items, self._content, path)
            return _Tree(code_hash, items, scan(str(path)), _status(os.lstat(path)))
        except (OSError, UnpackError) as e:
            log.warning("Could not build a spare copy of code %s: %s", code_hash[:12], e)
            return None

    def _restore(self, path: Path, tree: _Tree) -> Optional[_Tree]:
        try:
            statuses = restore_tree(str(path), tree, self._content)
        except (OSError, UnpackError) as e:
            log.info("A finished job's copy of code %s is not reused: %s", tree.code_hash[:12], e)
            return None
        if statuses is None:
            return None
        return _Tree(tree.code_hash, tree.items, statuses, tree.root)


def scan(root: str) -> Dict[str, Status]:
    """The status of every entry under `root` (not following symlinks), by relative path."""
    statuses: Dict[str, Status] = {}
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative) if relative else root) as entries:
            for entry in entries:
                path = f"{relative}/{entry.name}" if relative else entry.name
                status = entry.stat(follow_symlinks=False)
                statuses[path] = _status(status)
                if stat.S_ISDIR(status.st_mode):
                    pending.append(path)
    return statuses


def _status(status: os.stat_result) -> Status:
    kind = stat.S_IFMT(status.st_mode)
    owner = (kind, stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid)
    if kind == stat.S_IFDIR:
        return owner  # its content is compared entry by entry; its times change with it
    return (*owner, status.st_ino, status.st_ctime_ns, status.st_size)


def restore_tree(root: str, tree: _Tree, content: Callable[[str], Path]) -> Optional[Dict[str, Status]]:
    """Undo what a job changed in the tree at `root` handed to it with `tree`'s statuses; returns the
    statuses it now has, or None if it cannot be reused (a folder's kind, mode or owner changed)."""
    if _status(os.lstat(root)) != tree.root:
        return None
    actual = scan(root)
    expected = tree.statuses
    wrong = [path for path, status in actual.items() if expected.get(path) != status]
    if not wrong and len(actual) == len(expected):
        return expected
    for path in wrong:
        status = expected.get(path)
        if status is not None and status[0] == stat.S_IFDIR:
            return None
    for path in sorted(wrong, key=lambda p: p.count("/"), reverse=True):
        remove_path(os.path.join(root, path))
    # What is left is as it was handed over (a changed folder returned above; an added one is gone whole).
    removed = set(wrong)
    statuses = {path: status for path, status in expected.items() if path in actual and path not in removed}
    real_root = os.path.realpath(root)
    made = {real_root}
    missing = [item for item in tree.items if item.path not in statuses]
    for item in sorted(missing, key=lambda item: item.kind != DIR):
        create_item(real_root, item, content, made)
    set_folder_modes(real_root, [item for item in missing if item.kind == DIR])
    for item in missing:
        statuses[item.path] = _status(os.lstat(os.path.join(real_root, item.path)))
    return statuses


def patch_tree(
    old: List[Item],
    new: List[Item],
    root: str,
    content: Callable[[str], Path],
    statuses: Dict[str, Status],
) -> Dict[str, Status]:
    """Turn the pristine tree of `old` at `root` into the tree of `new`, rewriting only what differs;
    returns the statuses of its entries (`statuses`, those of the tree of `old`, updated)."""
    before: Dict[str, Item] = {item.path: item for item in old}
    after: Dict[str, Item] = {item.path: item for item in new}
    # Folders may have been made read-only: open them up while their content changes (modes come last).
    for item in old:
        if item.kind == DIR and item.mode & 0o700 != 0o700:
            os.chmod(os.path.join(root, item.path), 0o700)
    gone = [path for path, item in before.items() if _differs(item, after.get(path))]
    for path in sorted(gone, key=lambda p: p.count("/"), reverse=True):
        remove_path(os.path.join(root, path))
    made = {root}
    created: List[str] = []
    for item in new:
        previous = before.get(item.path)
        if previous is None or _differs(previous, item):
            create_item(root, item, content, made)
            created.append(item.path)
    set_folder_modes(root, new)
    removed: Set[str] = set(gone)
    kept = {p: s for p, s in statuses.items() if p in after and not _under_any(p, removed)}
    for path in created:
        kept[path] = _status(os.lstat(os.path.join(root, path)))
    for item in new:  # folder modes were set again
        if item.kind == DIR:
            kept[item.path] = _status(os.lstat(os.path.join(root, item.path)))
    return kept


def _under_any(path: str, folders: Set[str]) -> bool:
    """Whether `path` or a folder above it is in `folders`."""
    while True:
        if path in folders:
            return True
        if "/" not in path:
            return False
        path = path.rsplit("/", 1)[0]


def _differs(old: Item, new: Optional[Item]) -> bool:
    if new is None or new.kind != old.kind:
        return True
    if old.kind == DIR:
        return False  # a folder's mode is set again at the end; its content is compared entry by entry
    return (old.mode, old.ref) != (new.mode, new.ref)
