"""The cache of built Python environments on this host: ROOT/<key>/<build id>/, one venv per build.

A build is made in its own new folder and never moved (a venv's scripts hold its absolute path); once it
succeeded, ROOT/<key>/current (a symlink, replaced atomically) points at it. A rebuild (`--force-build`)
makes a new folder and moves the link; the superseded build is deleted as soon as no job uses it, so a
task still running in it is never pulled out from under. Failed and unfinished builds are deleted too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

log = logging.getLogger(__name__)

CURRENT = "current"
INFO_FILE = "build.json"
VENV_DIR = "venv"
_LOCK_POLL_SECONDS = 0.25


class BuildCancelled(Exception):
    pass


class BuildStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._guard = threading.Lock()
        self._key_locks: Dict[str, threading.Lock] = {}
        self._in_use: Dict[Path, int] = {}

    def collect_garbage(self) -> None:
        """Delete every build that no `current` link points at (call when no job is running)."""
        try:
            keys = os.listdir(self._root)
        except OSError:
            return
        for key in keys:
            folder = self._root / key
            current = self.lookup(key)
            for name in _listdir(folder):
                path = folder / name
                if name != CURRENT and (current is None or path != current) and path not in self._in_use:
                    shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def locked(self, key: str, cancelled: Callable[[], bool]) -> Iterator[None]:
        """Hold the key's build lock: one build of a key at a time; waiting ends if the job is stopped."""
        with self._guard:
            lock = self._key_locks.setdefault(key, threading.Lock())
        while not lock.acquire(timeout=_LOCK_POLL_SECONDS):
            if cancelled():
                raise BuildCancelled()
        try:
            yield
        finally:
            lock.release()

    def lookup(self, key: str) -> Optional[Path]:
        """The folder of the key's current build, if there is a complete one."""
        link = self._root / key / CURRENT
        try:
            target = os.readlink(link)
        except OSError:
            return None
        path = self._root / key / target
        return path if (path / INFO_FILE).is_file() and (path / VENV_DIR).is_dir() else None

    def info(self, build: Path) -> Dict[str, object]:
        try:
            with open(build / INFO_FILE, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def new_build(self, key: str) -> Path:
        path = self._root / key / f"b-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        self.acquire(path)
        return path

    def publish(self, key: str, build: Path, info: Dict[str, object]) -> None:
        """Make `build` the key's current one (its info file marks it complete)."""
        with open(build / INFO_FILE, "w", encoding="utf-8") as f:
            json.dump({**info, "key": key, "built_at": time.time()}, f, indent=1, sort_keys=True)
        previous = self.lookup(key)
        link = self._root / key / CURRENT
        tmp = link.with_name(f".{CURRENT}.{uuid.uuid4().hex[:8]}")
        os.symlink(build.name, tmp)
        os.replace(tmp, link)
        if previous is not None and previous != build:
            self._delete_if_unused(previous)

    def discard(self, build: Path) -> None:
        """Delete a failed build (its user still releases it as usual)."""
        shutil.rmtree(build, ignore_errors=True)

    def acquire(self, build: Path) -> None:
        with self._guard:
            self._in_use[build] = self._in_use.get(build, 0) + 1

    def release(self, build: Path) -> None:
        with self._guard:
            count = self._in_use.get(build, 0) - 1
            if count > 0:
                self._in_use[build] = count
                return
            self._in_use.pop(build, None)
        key = build.parent.name
        if self.lookup(key) != build:
            self._delete_if_unused(build)

    def _delete_if_unused(self, build: Path) -> None:
        with self._guard:
            if build in self._in_use:
                return
        log.info("Deleting superseded build %s", build)
        shutil.rmtree(build, ignore_errors=True)


def _listdir(folder: Path) -> List[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []
