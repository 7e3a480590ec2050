"""Spare copies of recent code trees, so that a job's folder is ready the moment the job starts.

A job's folder is its own copy of the code (never links into the store: the job may write to it). For a
big repository that copy is most of a job's start: thousands of files created, hundreds of MB copied.
So the agent keeps a pristine copy of the latest trees it built, made in a background thread after a job
took the previous one; the next job of the same code gets it with one rename. A job of slightly different
code (one file edited) gets the most recent spare patched: only the entries that differ are rewritten.

Spares are the agent's own (no job ever saw them), at most MAX_SPARES of them, each at most
MAX_SPARE_BYTES of files; they cost that much disk beside the store.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

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
_WAIT_FOR_BUILD_SECONDS = 60.0  # a job waits this long at most for a spare being built
_BUILDING_PREFIX = ".building-"


class SpareTrees:
    def __init__(self, folder: Path, content: Callable[[str], Path]) -> None:
        self._folder = folder
        self._content = content
        make_private_dir(folder)
        for leftover in folder.iterdir():  # from an earlier agent: cheaper to drop than to trust
            shutil.rmtree(leftover, ignore_errors=True)
        self._changed = threading.Condition()
        self._spares: "OrderedDict[str, Tuple[Path, List[Item]]]" = OrderedDict()  # most recent last
        self._building: Optional[str] = None
        self._wanted: Optional[Tuple[str, List[Item]]] = None
        self._worker: Optional[threading.Thread] = None
        self._serial = 0

    def take(self, code_hash: str, items: List[Item], destination: Path) -> bool:
        """Move a spare of this code to `destination` (patching the most recent spare if there is none of
        it); False if there is no spare to use."""
        deadline = time.monotonic() + _WAIT_FOR_BUILD_SECONDS
        with self._changed:
            while self._building is not None and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            if code_hash in self._spares:
                spare_hash = code_hash
                path, old = self._spares.pop(code_hash)
            elif self._spares:
                spare_hash, (path, old) = self._spares.popitem(last=True)
            else:
                return False
        try:
            if spare_hash != code_hash:
                patch_tree(old, items, str(path), self._content)
            if destination.exists():
                destination.rmdir()  # the job's empty folder, replaced by the spare
            os.rename(path, destination)
            return True
        except (OSError, UnpackError) as e:
            log.warning("A spare copy of the code could not be used (%s); building the folder instead", e)
            shutil.rmtree(path, ignore_errors=True)
            return False

    def offer(self, code_hash: str, items: List[Item]) -> None:
        """Ask for a spare of this code, built in the background (the latest ask wins)."""
        if sum(item.size for item in items if item.kind == FILE) > MAX_SPARE_BYTES:
            return
        with self._changed:
            if code_hash in self._spares or self._building == code_hash:
                return
            self._wanted = (code_hash, items)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._build_wanted, name="spare-trees", daemon=True)
                self._worker.start()

    def _build_wanted(self) -> None:
        while True:
            with self._changed:
                if self._wanted is None:
                    return
                code_hash, items = self._wanted
                self._wanted = None
                self._building = code_hash
                self._serial += 1
                path = self._folder / f"{_BUILDING_PREFIX}{self._serial}"
            built = False
            try:
                path.mkdir()
                build_tree(items, self._content, path)
                built = True
            except (OSError, UnpackError) as e:
                log.warning("Could not build a spare copy of code %s: %s", code_hash[:12], e)
            with self._changed:
                self._building = None
                if built:
                    final = self._folder / code_hash
                    try:
                        os.rename(path, final)
                        self._spares[code_hash] = (final, items)
                    except OSError:
                        built = False
                while len(self._spares) > MAX_SPARES:
                    _, (old_path, _) = self._spares.popitem(last=False)
                    shutil.rmtree(old_path, ignore_errors=True)
                self._changed.notify_all()
            if not built:
                shutil.rmtree(path, ignore_errors=True)


def patch_tree(old: List[Item], new: List[Item], root: str, content: Callable[[str], Path]) -> None:
    """Turn the pristine tree of `old` at `root` into the tree of `new`, rewriting only what differs."""
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
    for item in new:
        previous = before.get(item.path)
        if previous is None or _differs(previous, item):
            create_item(root, item, content, made)
    set_folder_modes(root, new)


def _differs(old: Item, new: Optional[Item]) -> bool:
    if new is None or new.kind != old.kind:
        return True
    if old.kind == DIR:
        return False  # a folder's mode is set again at the end; its content is compared entry by entry
    return (old.mode, old.ref) != (new.mode, new.ref)
