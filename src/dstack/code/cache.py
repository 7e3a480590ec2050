"""The on-disk cache of code archives: <sha256>.tar files and an index of recent manifests.

The index maps each code root to its last few (manifest digest -> archive) records, newest first.
A manifest digest covers every entry's path, kind, size, mode, mtime, ctime, inode and link target:
when a re-run lists the same manifest and the archive is still there, nothing is read again.

Several dstack processes may share the cache: archives are renamed into place (atomic, and the
same name always means the same bytes), the index is replaced atomically, and a lost index update
only costs a later re-pack.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from dstack.code.archive import HashingWriter
from dstack.code.errors import CodeError
from dstack.code.walk import ScannedEntry

ARCHIVES_PER_ROOT = 3
MAX_ROOTS = 16
INDEX_NAME = "index.json"
_INDEX_VERSION = 1
# Bump when the archive layout changes, so old manifests stop pointing at archives we'd no
# longer produce.
_ARCHIVE_FORMAT = b"dstack-code-tar-v1"
_TEMP_PREFIX = ".partial-"
_STALE_AFTER_SECONDS = 3600


def default_cache_dir() -> Path:
    return Path.home() / ".dstack" / "cache" / "code"


class CachedArchive(NamedTuple):
    path: Path
    sha256: str
    size: int


def manifest_digest(scanned: Sequence[ScannedEntry]) -> str:
    digest = hashlib.sha256(_ARCHIVE_FORMAT + b"\0")
    for entry, status in scanned:
        if entry.kind == "dir":
            # Directory mtimes are not archived (see archive.py), so they must not miss the cache.
            fields: tuple[object, ...] = (entry.kind, entry.mode)
        else:
            fields = (
                entry.kind,
                entry.size,
                entry.mode,
                entry.mtime_ns,
                # ctime and inode catch a rewrite that restored size and mtime (cp -p, rsync -t).
                status.st_ctime_ns,
                status.st_ino,
                entry.link_target or "",
            )
        digest.update(os.fsencode(entry.rel_path) + b"\0")
        digest.update(os.fsencode("\0".join(map(str, fields))) + b"\0\0")
    return digest.hexdigest()


def _is_valid_record(record: object) -> bool:
    """Index records name files in the cache folder: only a real digest may become a file name."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("manifest"), str)
        and isinstance(record.get("size"), int)
        and _is_sha256(record.get("sha256"))
    )


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class ArchiveCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._index_path = directory / INDEX_NAME

    def lookup(self, root_key: str, manifest: str) -> CachedArchive | None:
        """The archive recorded for this manifest, if it is still there intact."""
        index = self._load_index()
        records = index.get(root_key, [])
        for position, record in enumerate(records):
            if record.get("manifest") != manifest:
                continue
            archive = self._archive(record)
            if archive is None:
                return None
            if position != 0 or next(reversed(index)) != root_key:
                records.insert(0, records.pop(position))
                self._touch_root(index, root_key, records)
                self._save_index(index)
            return archive
        return None

    def store(self, root_key: str, manifest: str, write: Callable[[HashingWriter], None]) -> CachedArchive:
        """Write a new archive through `write`, file it under its sha256, record and prune."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CodeError(
                f"Cannot create the code cache folder {self.directory} ({exc.strerror})"
            ) from None
        temp_path = self.directory / f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}.tar"
        try:
            with open(temp_path, "xb") as file:
                sink = HashingWriter(file, str(temp_path))
                write(sink)
            sha256 = sink.hexdigest()
            final_path = self.directory / f"{sha256}.tar"
            temp_path.replace(final_path)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        record = {"manifest": manifest, "sha256": sha256, "size": sink.size}
        index = self._load_index()
        previous = [old for old in index.get(root_key, []) if old.get("manifest") != manifest]
        self._touch_root(index, root_key, [record, *previous][:ARCHIVES_PER_ROOT])
        dropped = {old.get("sha256") for old in previous[ARCHIVES_PER_ROOT - 1 :]}
        while len(index) > MAX_ROOTS:
            dropped.update(old.get("sha256") for old in index.pop(next(iter(index))))
        self._save_index(index)
        kept = {old.get("sha256") for records in index.values() for old in records}
        for sha in dropped - kept:
            (self.directory / f"{sha}.tar").unlink(missing_ok=True)
        self._sweep_orphans(kept)
        return CachedArchive(final_path, sha256, sink.size)

    def _archive(self, record: dict[str, object]) -> CachedArchive | None:
        sha256, size = record["sha256"], record["size"]
        assert isinstance(sha256, str) and isinstance(size, int)  # _is_valid_record checked them
        path = self.directory / f"{sha256}.tar"
        try:
            intact = path.stat().st_size == size
        except OSError:
            return None
        return CachedArchive(path, sha256, size) if intact else None

    @staticmethod
    def _touch_root(
        index: dict[str, list[dict[str, object]]], root_key: str, records: list[dict[str, object]]
    ) -> None:
        index.pop(root_key, None)
        index[root_key] = records  # dict order is recency: the least recently used root is first

    def _load_index(self) -> dict[str, list[dict[str, object]]]:
        try:
            data = json.loads(self._index_path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _INDEX_VERSION:
            return {}
        roots = data.get("roots")
        if not isinstance(roots, dict):
            return {}
        return {
            key: [record for record in records if _is_valid_record(record)]
            for key, records in roots.items()
            if isinstance(key, str) and isinstance(records, list)
        }

    def _save_index(self, index: dict[str, list[dict[str, object]]]) -> None:
        temp_path = self.directory / f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}.json"
        try:
            temp_path.write_text(json.dumps({"version": _INDEX_VERSION, "roots": index}))
            temp_path.replace(self._index_path)
        except OSError:
            # The index only saves work; failing to update it must not fail the run.
            temp_path.unlink(missing_ok=True)

    def _sweep_orphans(self, kept: set[object]) -> None:
        """Remove leftovers of crashed or lost runs; recent ones may belong to a concurrent pack."""
        cutoff = time.time() - _STALE_AFTER_SECONDS
        try:
            paths = list(self.directory.iterdir())
        except OSError:
            return
        for path in paths:
            name = path.name
            orphan = name.startswith(_TEMP_PREFIX) or (name.endswith(".tar") and name[:-4] not in kept)
            if not orphan:
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue
