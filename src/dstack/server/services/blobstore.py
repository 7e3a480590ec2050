"""A project's stored contents (the code it uploaded), by sha256: what is there, writing, reading.

A content of SMALL bytes or more is a file of its own, `blobs/ab/<sha256>`, sent to hosts straight from
that file (sendfile). The smaller ones, most of a repository's files, are appended to one pack per upload,
`packs/<id>.pack`, and found through the pack's index, `packs/<id>.idx`: a record (sha256, offset, size)
for each content, written once the pack is on disk. Making a file costs some file systems far more than
writing its bytes (ext4 on these machines spends up to a millisecond of kernel time finding a free inode),
and a repository has thousands of small files: a first upload of one made the server create a file per
file, slower than reading and hashing the whole tree. A pack without an index (an upload cut short) holds
nothing that is found; one left by a crash is removed when the project's index is next loaded, once old.
Small contents stored as files (before packs) are still found.

Each project's index lives in memory once loaded (48 bytes on disk, about 150 in memory, per content).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dstack.code.blobs import HEADER
from dstack.server.services.direct_write import DirectFile
from dstack.server.services.errors import ServiceError, TooLarge

SMALL = 256 * 1024  # below this, a content is packed (and arrives whole in one piece of the stream)
_RECORD = struct.Struct(">32sQQ")  # sha256, offset in the pack, size
_WRITERS = 4
_MAX_PENDING_WRITES = 256
_TEMP_PREFIX = ".upload-"
_ORPHAN_SECONDS = 3600.0  # a pack without an index this old is no upload in progress


class ProjectStore:
    """The contents of one project (one instance per folder, see `store_at`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._blobs = os.fspath(folder / "blobs")
        self._packs = folder / "packs"
        self._lock = threading.Lock()
        self._index: dict[bytes, tuple[str, int, int]] | None = None  # sha256 -> (pack, offset, size)

    def has(self, sha256: str, size: int) -> bool:
        # The size check catches a content file cut short by a crash before it reached the disk.
        found = self._packed().get(bytes.fromhex(sha256))
        if found is not None:
            return found[2] == size
        try:
            return os.stat(self.file(sha256)).st_size == size  # noqa: PTH116 (str paths: a hot loop)
        except OSError:
            return False

    def missing(self, blobs: list[tuple[str, int]]) -> list[str]:
        """Those of these (sha256, size) contents the project does not hold."""
        return [sha256 for sha256, size in blobs if not self.has(sha256, size)]

    def file(self, sha256: str) -> str:
        """The file of a content stored on its own (every big one)."""
        return f"{self._blobs}/{sha256[:2]}/{sha256}"

    def read_small(self, sha256: str, size: int) -> bytes:
        found = self._packed().get(bytes.fromhex(sha256))
        if found is None:
            with open(self.file(sha256), "rb") as f:
                data = f.read()
        else:
            fd = os.open(self._packs / f"{found[0]}.pack", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.pread(fd, found[2], found[1])
            finally:
                os.close(fd)
        if len(data) != size:
            raise OSError(f"the stored content {sha256[:12]} is {len(data)} bytes, not {size}")
        return data

    def receiver(self, limit: int) -> BlobReceiver:
        return BlobReceiver(self, limit)

    def _packed(self) -> dict[bytes, tuple[str, int, int]]:
        index = self._index
        if index is None:
            with self._lock:
                if self._index is None:
                    self._index = _load(self._packs)
                index = self._index
        return index

    def _publish(self, pack: str, records: list[tuple[bytes, int, int]]) -> None:
        """Write the index of a pack that is on disk, then let its contents be found."""
        self._packed()
        index_file = self._packs / f"{pack}.idx"
        temp = self._packs / f".{pack}.idx.tmp"
        with open(temp, "wb") as f:
            f.write(b"".join(_RECORD.pack(sha, offset, size) for sha, offset, size in records))
            f.flush()
            os.fsync(f.fileno())
        temp.replace(index_file)
        with self._lock:
            assert self._index is not None
            for sha, offset, size in records:
                self._index.setdefault(sha, (pack, offset, size))

    def _new_pack(self) -> tuple[str, int]:
        self._packs.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        fd = os.open(self._packs / f"{name}.pack", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return name, fd


def _load(packs: Path) -> dict[bytes, tuple[str, int, int]]:
    index: dict[bytes, tuple[str, int, int]] = {}
    try:
        names = sorted(entry.name for entry in packs.iterdir())
    except FileNotFoundError:
        return index
    indexed = {name[: -len(".idx")] for name in names if name.endswith(".idx")}
    for pack in sorted(indexed):
        data = (packs / f"{pack}.idx").read_bytes()
        usable = len(data) - len(data) % _RECORD.size
        for sha, offset, size in _RECORD.iter_unpack(data[:usable]):
            index.setdefault(sha, (pack, offset, size))
    now = time.time()
    for name in names:
        if name.endswith(".pack") and name[: -len(".pack")] not in indexed:
            with contextlib.suppress(OSError):
                if now - (packs / name).stat().st_mtime > _ORPHAN_SECONDS:
                    (packs / name).unlink()
    return index


_stores: dict[str, ProjectStore] = {}
_stores_lock = threading.Lock()


def store_at(folder: Path) -> ProjectStore:
    """The one store of this folder in this process (its index is loaded once)."""
    path = Path(folder).absolute()
    key = os.fspath(path)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = ProjectStore(path)
        return store


class BlobReceiver:
    """Writes a blob stream (dstack.code.blobs) into a store as it arrives, keeping only verified contents.

    Small contents are hashed and written by a pool of threads at their place in the upload's pack (files
    are written in parallel, hashes computed beside the loop); big ones are hashed as they stream in and
    written past the page cache (direct_write.py).
    str paths and os calls, not pathlib: a repository's thousands of small files make this a hot loop.
    """

    def __init__(self, store: ProjectStore, limit: int) -> None:
        self._store = store
        self._limit = limit
        self._received = 0
        self._count = 0
        self._header = b""
        self._in_blob = False
        self._sha256 = ""
        self._left = 0
        self._digest: hashlib._Hash | None = None  # None while skipping a content already stored
        self._file: DirectFile | None = None  # one buffer for every big content of the upload
        self._temp: str | None = None
        self._folders: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[Future[None]] = []
        self._temp_prefix = f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-"
        self._pack: tuple[str, int] | None = None  # (name, fd) of this upload's pack, once it has one
        self._pack_end = 0
        self._packed: dict[bytes, tuple[int, int]] = {}  # sha256 -> (offset, size) in this upload's pack
        self._parts: list[bytes] | None = None  # a small content that came split, until it is whole

    def feed_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.feed(chunk)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not self._in_blob:
                need = HEADER.size - len(self._header)
                self._header += bytes(view[:need])
                view = view[need:]
                if len(self._header) == HEADER.size:
                    raw, size = HEADER.unpack(self._header)
                    if size < SMALL and size <= len(view):
                        self._header = b""
                        self._small(raw, view[:size])
                        view = view[size:]
                    else:
                        self._start()
                continue
            piece = view[: self._left]
            view = view[len(piece) :]
            self._left -= len(piece)
            if self._parts is not None:
                self._parts.append(bytes(piece))
                if self._left == 0:
                    self._in_blob, data, self._parts = False, b"".join(self._parts), None
                    self._small(bytes.fromhex(self._sha256), memoryview(data))
                continue
            if self._digest is not None and self._file is not None:  # a big content being written
                self._digest.update(piece)
                self._file.write(piece)
            if self._left == 0:
                self._end()

    def _small(self, raw: bytes, data: memoryview) -> None:
        self._received += len(data)
        if self._received > self._limit:
            raise TooLarge(f"The code upload is over the server's {_mb(self._limit)} limit")
        if raw in self._packed or self._store.has(raw.hex(), len(data)):
            return
        if self._pack is None:
            self._pack = self._store._new_pack()
        offset = self._pack_end
        self._pack_end += len(data)
        self._packed[raw] = (offset, len(data))
        self._count += 1
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="code-upload")
        self._writes.append(self._pool.submit(_write_small, self._pack[1], raw, data, offset))
        if len(self._writes) >= _MAX_PENDING_WRITES:  # each holds a piece of the body in memory
            self._writes.pop(0).result()

    def _start(self) -> None:
        raw, size = HEADER.unpack(self._header)
        self._header = b""
        self._in_blob, self._sha256, self._left = True, raw.hex(), size
        if 0 < size < SMALL:  # a small content split across pieces of the stream: packed once whole
            self._parts = []
            return
        self._received += size
        if self._received > self._limit:
            raise TooLarge(f"The code upload is over the server's {_mb(self._limit)} limit")
        if size >= SMALL and not self._store.has(self._sha256, size):
            target = self._store.file(self._sha256)
            folder = os.path.dirname(target)  # noqa: PTH120 (str paths, see above)
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)  # noqa: PTH103
                self._folders.add(folder)
            self._count += 1
            self._temp = f"{folder}/{self._temp_prefix}{self._count}"
            if self._file is None:
                self._file = DirectFile()
            self._file.open(self._temp)
            self._digest = hashlib.sha256()
        if size == 0:
            self._end()

    def _end(self) -> None:
        self._in_blob = False
        if self._digest is None or self._file is None or self._temp is None:
            return  # stored already: these bytes were not needed
        digest, self._digest = self._digest, None
        self._file.close()
        if digest.hexdigest() != self._sha256:
            raise _mismatch(self._sha256)
        os.replace(self._temp, self._store.file(self._sha256))  # noqa: PTH105
        self._temp = None

    def finish(self) -> int:
        """How many contents were new (the others were here already)."""
        self._wait_for_writes()
        self._release_file()
        if self._in_blob or self._header or self._parts is not None:
            raise ServiceError("The code upload ended in the middle of a content; send it again")
        if self._pack is not None:
            name, fd = self._pack
            os.fsync(fd)  # on disk before its index says it holds anything
            os.close(fd)
            self._pack = None
            self._store._publish(name, [(sha, offset, size) for sha, (offset, size) in self._packed.items()])
        return self._count

    def _wait_for_writes(self) -> None:
        writes, self._writes = self._writes, []
        error: BaseException | None = None
        for write in writes:
            try:
                write.result()
            except BaseException as e:  # every write is waited for; the first failure is the answer
                error = error or e
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if error is not None:
            raise error

    def _release_file(self) -> None:
        if self._file is not None:
            self._file.release()
            self._file = None

    def abort(self) -> None:
        """Remove what an unfinished upload left (after finish(), nothing is left)."""
        with contextlib.suppress(BaseException):
            self._wait_for_writes()
        self._digest = None
        self._release_file()
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)  # noqa: PTH108
            self._temp = None
        if self._pack is not None:
            name, fd = self._pack
            os.close(fd)
            self._pack = None
            (self._store._packs / f"{name}.pack").unlink(missing_ok=True)


def _write_small(fd: int, raw: bytes, data: memoryview, offset: int) -> None:
    if hashlib.sha256(data).digest() != raw:
        raise _mismatch(raw.hex())
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _mismatch(sha256: str) -> ServiceError:
    return ServiceError(
        f"The uploaded content {sha256[:12]} does not match its hash; the upload was corrupted, try again"
    )


def _mb(size: int) -> str:
    return f"{size / 1024**2:.0f} MB"
