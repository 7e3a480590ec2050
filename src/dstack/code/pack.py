"""Packing the code root into a content-addressed tar, reusing the last one when nothing changed."""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import NamedTuple

from dstack.code.errors import CodeTooLargeError
from dstack.code.ignore import IgnoreRules
from dstack.code.walk import ScannedEntry, scan_tree

DEFAULT_LIMIT_BYTES = 500 * 1024**2
_BIGGEST_FILES_SHOWN = 5


class PackedCode(NamedTuple):
    path: Path  # the tar file, in the cache folder; keep it until uploaded, the cache may prune it later
    sha256: str  # of the tar's bytes: equal trees give equal digests
    size: int  # bytes of the tar
    files: int  # regular files and symlinks packed (directories not counted)


def pack_code(
    root: Path,
    *,
    limit_bytes: int = DEFAULT_LIMIT_BYTES,
    cache_dir: Path | None = None,
    rules: IgnoreRules | None = None,
) -> PackedCode:
    """Pack the non-ignored code under root; raises CodeTooLargeError (before writing anything)
    when the files add up to more than limit_bytes, CodeError for unreadable or changing files."""
    # hashlib, json and tarfile load only when packing, not for the watcher's ignore checks.
    from dstack.code.archive import write_archive
    from dstack.code.cache import ArchiveCache, default_cache_dir, manifest_digest

    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    if rules is None:
        rules = IgnoreRules(root, always_ignored=_state_dirs_inside(root, cache_dir))
    scanned = list(scan_tree(root, rules))
    _check_size(root, scanned, limit_bytes)
    files = sum(1 for item in scanned if item.entry.kind != "dir")
    cache = ArchiveCache(cache_dir)
    root_key = os.fspath(root.resolve())
    manifest = manifest_digest(scanned)
    archive = cache.lookup(root_key, manifest)
    if archive is None:
        archive = cache.store(root_key, manifest, lambda sink: write_archive(root, scanned, sink))
    return PackedCode(path=archive.path, sha256=archive.sha256, size=archive.size, files=files)


def _state_dirs_inside(root: Path, cache_dir: Path) -> frozenset[str]:
    """dstack's own folders (server database, archives, tokens) never travel, even from a home directory."""
    found = set()
    resolved_root = root.resolve()
    for folder in (Path.home() / ".dstack", cache_dir):
        try:
            found.add(folder.resolve().relative_to(resolved_root).as_posix())
        except ValueError:
            continue
    return frozenset(found)


def _check_size(root: Path, scanned: list[ScannedEntry], limit_bytes: int) -> None:
    sizes = [(item.entry.size, item.entry.rel_path) for item in scanned if item.entry.kind == "file"]
    total = sum(size for size, _ in sizes)
    if total <= limit_bytes:
        return
    biggest = heapq.nsmallest(_BIGGEST_FILES_SHOWN, sizes, key=lambda pair: (-pair[0], pair[1]))
    raise CodeTooLargeError(root, total, limit_bytes, [(path, size) for size, path in biggest])
