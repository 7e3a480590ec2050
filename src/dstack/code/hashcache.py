"""The client's cache of content hashes: a file whose size, mtime, ctime and inode are unchanged since it
was last hashed is not read again.

One small JSON file per code root under ~/.dstack/cache/code/ ({rel_path: [size, mtime_ns, ctime_ns,
ino, sha256]}), private to the user (it names their files). Several dstack processes may share the
cache: files are replaced atomically, and a lost update only costs hashing a file again. The least
recently used roots beyond MAX_ROOTS are dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from dstack.code.manifest import is_sha256
from dstack.core.sha256 import sha256

MAX_ROOTS = 32
_VERSION = 2
_SUFFIX = ".hashes.json"
_TEMP_PREFIX = ".partial-"
_STALE_AFTER_SECONDS = 3600

Stamp = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, ino: what tells a file was rewritten


def default_cache_dir() -> Path:
    return Path.home() / ".dstack" / "cache" / "code"


def stamp(status: os.stat_result) -> Stamp:
    return (status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


def is_cached(directory: Path, root_key: str) -> bool:
    """Whether the tree at `root_key` was hashed before (so a snapshot of it reads only what changed)."""
    return _path_of(directory, root_key).is_file()


def _path_of(directory: Path, root_key: str) -> Path:
    name = sha256(root_key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return directory / f"{name}{_SUFFIX}"


class HashCache:
    def __init__(self, directory: Path, root_key: str) -> None:
        self.directory = directory
        self._path = _path_of(directory, root_key)
        self._known: dict[str, tuple[Stamp, str]] = self._load()
        self._changed = False

    def lookup(self, rel_path: str, key: Stamp) -> str | None:
        known = self._known.get(rel_path)
        return known[1] if known is not None and known[0] == key else None

    def record(self, rel_path: str, key: Stamp, sha256: str) -> None:
        self._known[rel_path] = (key, sha256)
        self._changed = True

    def save(self, kept: set[str]) -> None:
        """Write what is known about the paths in `kept` (the others are gone from the tree)."""
        if not self._changed and kept == self._known.keys():
            with contextlib.suppress(OSError):
                os.utime(self._path)  # recency, for pruning
            return
        files = {path: [*key, sha] for path, (key, sha) in self._known.items() if path in kept}
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            temp = self.directory / f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _VERSION, "files": files}, f, separators=(",", ":"))
            temp.replace(self._path)
        except OSError:
            return  # the cache only saves work: failing to update it must not fail the run
        self._prune()

    def _load(self) -> dict[str, tuple[Stamp, str]]:
        try:
            document = json.loads(self._path.read_bytes())
        except (OSError, ValueError):
            return {}
        files = document.get("files") if isinstance(document, dict) else None
        if document.get("version") != _VERSION or not isinstance(files, dict):
            return {}
        known = {}
        for path, record in files.items():
            if (
                isinstance(record, list)
                and len(record) == 5
                and all(isinstance(n, int) for n in record[:4])
                and is_sha256(record[4])
            ):
                known[path] = ((record[0], record[1], record[2], record[3]), record[4])
        return known

    def _prune(self) -> None:
        try:
            paths = list(self.directory.iterdir())
        except OSError:
            return
        caches, cutoff = [], time.time() - _STALE_AFTER_SECONDS
        for path in paths:
            try:
                status = path.stat()
            except OSError:
                continue
            if path.name.endswith(_SUFFIX):
                caches.append((status.st_mtime, path))
            elif path.name.endswith((".tar", "index.json")) or (
                path.name.startswith(_TEMP_PREFIX) and status.st_mtime < cutoff
            ):
                # Archives and the index of the former (tar) cache format; temp files of crashed runs.
                path.unlink(missing_ok=True)
        caches.sort(reverse=True)
        for _, path in caches[MAX_ROOTS:]:
            path.unlink(missing_ok=True)
