"""A snapshot of the code: its manifest (see dstack.code.manifest) and where each content can be read.

Taking one lists the tree, checks the size limit before reading anything, and hashes only the files the
hash cache does not know in their current state (size, mtime, ctime, inode); an unchanged tree is listed
and nothing is read. Uploading it (dstack.api.Client.upload_code) sends only the contents the server
lacks, each checked again against what was listed, so a file that changes meanwhile is an error and
never a wrong upload.
"""

from __future__ import annotations

import heapq
import os
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from dstack.code.errors import CodeError, CodeTooLargeError, FileChangedError
from dstack.code.hashcache import HashCache, default_cache_dir, is_cached, stamp
from dstack.code.ignore import IgnoreRules
from dstack.code.manifest import DIR, FILE, SYMLINK, Entry, code_hash, encode_manifest
from dstack.code.walk import CodeEntry, ScannedEntry, scan_tree

DEFAULT_LIMIT_BYTES = 500 * 1024**2
_BIGGEST_FILES_SHOWN = 5
_READ_CHUNK = 1024 * 1024
_PARALLEL_HASH_BYTES = 32 * 1024 * 1024  # below this much to read, one thread
_HASH_THREADS = 4
# A file changed less than a timestamp tick before it was hashed may change again within that tick
# without its stamp showing it (git's "racily clean" entries): its hash is used but not cached. Kernels
# stamp from a clock that ticks every few ms; file systems that keep whole seconds need seconds.
_RACY_NS = 20_000_000
_RACY_COARSE_NS = 2_000_000_000
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)  # a file swapped for a symlink must not be followed
    | getattr(os, "O_NONBLOCK", 0)  # ... nor hang us if swapped for a fifo
)


class BlobSource(NamedTuple):
    """Where one content can be read, and the lstat it had when listed (to tell if it changed since)."""

    path: str
    rel_path: str
    status: os.stat_result


class CodeSnapshot(NamedTuple):
    code_hash: str  # sha256 of the manifest: equal trees give equal hashes, wherever they are
    manifest: bytes
    blobs: dict[str, BlobSource]  # content sha256 -> one place to read it
    size: int  # bytes of all files
    files: int  # files and symlinks (folders not counted)

    def blob_size(self, sha256: str) -> int:
        return self.blobs[sha256].status.st_size

    def open_blob(self, sha256: str) -> IO[bytes]:
        """The content, opened and checked to be what was listed; check_unchanged() after reading it."""
        source = self.blobs[sha256]
        try:
            fd = os.open(source.path, _READ_FLAGS)
        except OSError:
            raise changed_error(source.rel_path, "uploaded") from None
        file = os.fdopen(fd, "rb")
        try:
            self.check_unchanged(sha256, file)
        except BaseException:
            file.close()
            raise
        return file

    def check_unchanged(self, sha256: str, file: IO[bytes]) -> None:
        source = self.blobs[sha256]
        if not _same(os.fstat(file.fileno()), source.status):
            raise changed_error(source.rel_path, "uploaded")


def snapshotted_before(root: Path, cache_dir: Path | None = None) -> bool:
    """Whether this tree was snapshotted before: a snapshot of it now reads only the files that changed."""
    return is_cached(cache_dir if cache_dir is not None else default_cache_dir(), os.fspath(root.resolve()))


def snapshot_code(
    root: Path,
    *,
    limit_bytes: int = DEFAULT_LIMIT_BYTES,
    cache_dir: Path | None = None,
    rules: IgnoreRules | None = None,
) -> CodeSnapshot:
    """The non-ignored code under root. Raises CodeTooLargeError (before reading any file) when its files
    add up to more than limit_bytes, CodeError for unreadable files or files that change meanwhile."""
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    if rules is None:
        rules = IgnoreRules(root, always_ignored=_state_dirs_inside(root, cache_dir))
    scanned = list(scan_tree(root, rules))
    root_dir = os.fspath(root)
    listed = [(item.entry.rel_path, f"{root_dir}{os.sep}{item.entry.rel_path}", item) for item in scanned]
    return _snapshot(root, listed, limit_bytes, HashCache(cache_dir, os.fspath(root.resolve())))


def snapshot_paths(
    items: Sequence[tuple[Path, str]],
    *,
    limit_bytes: int = DEFAULT_LIMIT_BYTES,
    cache_dir: Path | None = None,
) -> CodeSnapshot:
    """A snapshot of local files and folders, each placed at a relative path of its own: `(local, target)`.

    For extra files that travel with a run (e.g. a `files:` field): a folder brings what its own ignore
    files leave in (as the code root does), a file itself. Targets must be relative paths without `..`,
    and none may lie inside another one.
    """
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    listed: list[tuple[str, str, ScannedEntry]] = []
    targets: list[str] = []
    for local, target in items:
        rel = _normalise_target(target)
        if any(rel == t or rel.startswith(t + "/") or t.startswith(rel + "/") for t in targets):
            raise CodeError(f"The target {target} overlaps another one; give each path a place of its own")
        targets.append(rel)
        try:
            status = local.lstat()
        except OSError as exc:
            raise CodeError(f"Cannot read {local} ({exc.strerror})") from None
        if stat.S_ISDIR(status.st_mode):
            listed.append((rel, os.fspath(local), _dir_entry(rel, status)))
            local_dir = os.fspath(local)
            for item in scan_tree(local, IgnoreRules(local)):
                sub = item.entry.rel_path
                listed.append((f"{rel}/{sub}", f"{local_dir}{os.sep}{sub}", item))
        elif stat.S_ISREG(status.st_mode):
            listed.append((rel, os.fspath(local), _file_entry(rel, status)))
        else:  # a symlink would point anywhere; devices and fifos are not files
            raise CodeError(f"{local} is neither a file nor a folder")
    present = {path for path, _, _ in listed}
    for rel in targets:
        parent = rel.rpartition("/")[0]
        while parent and parent not in present:
            # The folders above a target are plain folders: only their mode is used.
            listed.append((parent, "", _dir_entry(parent, Path(os.sep).stat(), mode=0o755)))
            present.add(parent)
            parent = parent.rpartition("/")[0]
    listed.sort(key=lambda item: os.fsencode(item[0]))
    key = "paths:" + "\0".join(f"{local.absolute()}\0{target}" for local, target in items)
    return _snapshot(None, listed, limit_bytes, HashCache(cache_dir, key))


def _snapshot(
    root: Path | None,
    listed: Iterable[tuple[str, str, ScannedEntry]],
    limit_bytes: int,
    cache: HashCache,
) -> CodeSnapshot:
    listed = list(listed)
    _check_size(root, listed, limit_bytes)
    entries: list[Entry] = []
    blobs: dict[str, BlobSource] = {}
    kept: set[str] = set()
    size = files = 0
    started_ns = time.time_ns()
    hashes, fresh = _hash_files(listed, cache)
    for rel, path, (entry, status) in listed:
        mode = entry.mode & 0o7777
        if entry.kind == "dir":
            entries.append((rel, DIR, mode, 0, ""))
            continue
        files += 1
        if entry.kind == "symlink":
            entries.append((rel, SYMLINK, mode, 0, entry.link_target or ""))
            continue
        sha256 = hashes[rel]
        if rel in fresh and not _racy(status, started_ns):
            cache.record(rel, stamp(status), sha256)
        kept.add(rel)
        entries.append((rel, FILE, mode, entry.size, sha256))
        blobs.setdefault(sha256, BlobSource(path, rel, status))
        size += entry.size
    cache.save(kept)
    manifest = encode_manifest(entries)
    return CodeSnapshot(code_hash(manifest), manifest, blobs, size, files)


def _hash_files(
    listed: list[tuple[str, str, ScannedEntry]], cache: HashCache
) -> tuple[dict[str, str], set[str]]:
    """Every regular file's sha256 by relative path (the cache's where its stamp still holds, else read),
    and the paths that were read.
    Many megabytes to read are hashed by a few threads (hashlib lets go of the GIL): a first upload's
    hashing is then bound by the disk and the cores, not by one core."""
    hashes: dict[str, str] = {}
    pending: list[tuple[str, str, os.stat_result]] = []
    for rel, path, (entry, status) in listed:
        if entry.kind not in ("dir", "symlink"):
            cached = cache.lookup(rel, stamp(status))
            if cached is None:
                pending.append((rel, path, status))
            else:
                hashes[rel] = cached
    if sum(status.st_size for _, _, status in pending) < _PARALLEL_HASH_BYTES:
        for rel, path, status in pending:
            hashes[rel] = hash_file(path, rel, status)
        return hashes, {rel for rel, _, _ in pending}
    # Big files first, so that one at the end does not leave the other threads idle.
    pending.sort(key=lambda item: item[2].st_size, reverse=True)
    # Imported here: it brings logging and threading (~6 ms), which a small repository never needs.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, os.cpu_count() or 1)) as pool:
        found = pool.map(lambda item: hash_file(item[1], item[0], item[2]), pending)
        for (rel, _, _), sha256 in zip(pending, found, strict=True):
            hashes[rel] = sha256
    return hashes, {rel for rel, _, _ in pending}


def hash_file(path: str, rel_path: str, listed: os.stat_result) -> str:
    """The sha256 of a file's content, which must stay as listed while it is read."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise changed_error(rel_path, "packed") from None
    except OSError as exc:
        if os.path.islink(path):  # noqa: PTH114 (str path: cheaper)
            raise changed_error(rel_path, "packed") from None
        raise CodeError(
            f"Cannot read {path} ({exc.strerror}); fix its permissions or add it to .dstackignore"
        ) from None
    import hashlib  # here: a tree whose files are all known never loads OpenSSL (see core/sha256.py)

    digest = hashlib.sha256()
    try:
        if not _same(os.fstat(fd), listed):
            raise changed_error(rel_path, "packed")
        remaining = listed.st_size
        buffer = bytearray(min(max(remaining, 1), _READ_CHUNK))
        view = memoryview(buffer)
        while remaining > 0:
            count = os.readv(fd, [view[: min(remaining, len(buffer))]])
            if count == 0:
                raise changed_error(rel_path, "packed")  # it shrank
            digest.update(view[:count])
            remaining -= count
        if os.read(fd, 1) or not _same(os.fstat(fd), listed):
            raise changed_error(rel_path, "packed")
    except OSError as exc:
        raise CodeError(f"Cannot read {path} ({exc.strerror})") from None
    finally:
        os.close(fd)
    return digest.hexdigest()


def _racy(status: os.stat_result, now_ns: int) -> bool:
    latest = max(status.st_mtime_ns, status.st_ctime_ns)
    coarse = status.st_mtime_ns % 1_000_000_000 == 0 and status.st_ctime_ns % 1_000_000_000 == 0
    return latest >= now_ns - (_RACY_COARSE_NS if coarse else _RACY_NS)


def changed_error(rel_path: str, doing: str) -> CodeError:
    return FileChangedError(rel_path, doing)


def _same(now: os.stat_result, listed: os.stat_result) -> bool:
    return (
        stat.S_ISREG(now.st_mode)
        and now.st_size == listed.st_size
        and now.st_mtime_ns == listed.st_mtime_ns
        and now.st_ctime_ns == listed.st_ctime_ns
        # Windows' directory listing reports inode 0; compare only when both are known.
        and (not now.st_ino or not listed.st_ino or now.st_ino == listed.st_ino)
    )


def _state_dirs_inside(root: Path, cache_dir: Path) -> frozenset[str]:
    """dstack's own folders (server database, caches, tokens) never travel, even from a home directory."""
    found = set()
    resolved_root = root.resolve()
    for folder in (Path.home() / ".dstack", cache_dir):
        try:
            found.add(folder.resolve().relative_to(resolved_root).as_posix())
        except ValueError:
            continue
    return frozenset(found)


def _check_size(root: Path | None, listed: list[tuple[str, str, ScannedEntry]], limit_bytes: int) -> None:
    sizes = [(item.entry.size, rel) for rel, _, item in listed if item.entry.kind == "file"]
    total = sum(size for size, _ in sizes)
    if total <= limit_bytes:
        return
    biggest = heapq.nsmallest(_BIGGEST_FILES_SHOWN, sizes, key=lambda pair: (-pair[0], pair[1]))
    raise CodeTooLargeError(root or Path(), total, limit_bytes, [(path, size) for size, path in biggest])


def _normalise_target(target: str) -> str:
    parts = [part for part in target.replace(os.sep, "/").split("/") if part not in ("", ".")]
    if target.startswith("/") or not parts or ".." in parts:
        raise CodeError(f"The target {target} must be a relative path inside the job's folder")
    return "/".join(parts)


def _file_entry(rel: str, status: os.stat_result) -> ScannedEntry:
    return ScannedEntry(CodeEntry(rel, "file", status.st_size, stat.S_IMODE(status.st_mode), 0, None), status)


def _dir_entry(rel: str, status: os.stat_result, mode: int | None = None) -> ScannedEntry:
    mode = stat.S_IMODE(status.st_mode) if mode is None else mode
    return ScannedEntry(CodeEntry(rel, "dir", 0, mode, 0, None), status)
