"""Writing a new file's bytes past the page cache (O_DIRECT), through one reused, aligned buffer.

On the virtual machines this project is tested on, filling a page-cache page that is new to the guest
costs a fault on the host: buffered writes of new data run at ~350 MB/s there, however fast the disk, while
O_DIRECT writes from a buffer already in memory run at ~2 GB/s (on a spinning disk a direct write would be
slower than the cache: not measured). A code upload writes hundreds
of megabytes the server will not read back soon (hosts get them by sendfile, from the disk's cache if it
is gone from ours), so its big contents are written this way. Where the file system refuses O_DIRECT
(tmpfs on older kernels, some FUSE mounts) the same calls write through the page cache.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

_ALIGN = 4096  # a multiple of every logical block size in use; O_DIRECT needs offsets and sizes of it
BUFFER_BYTES = 1024 * 1024


class DirectFile:
    """A new file written front to back; `close()` leaves exactly the bytes written.

    Each instance owns its buffer (1 MB, mapped once): keep one per writer and `open` file after file
    with it, so no write touches memory the process has not used before.
    """

    def __init__(self) -> None:
        self._buffer = mmap.mmap(-1, BUFFER_BYTES)  # page-aligned, as O_DIRECT wants
        self._view = memoryview(self._buffer)
        self._fd: int | None = None
        self._used = 0
        self._size = 0
        self._direct = False

    def open(self, path: str, mode: int = 0o600) -> None:
        """Create `path` (it must not exist) for writing."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags | os.O_DIRECT, mode)
            self._direct = True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._fd = os.open(path, flags, mode)
            self._direct = False
        self._used = self._size = 0

    def write(self, data: memoryview | bytes) -> None:
        if not self._direct:
            self._write_all(memoryview(data))
            self._size += len(data)
            return
        view = memoryview(data)
        while view:
            room = BUFFER_BYTES - self._used
            piece = view[:room]
            self._view[self._used : self._used + len(piece)] = piece
            self._used += len(piece)
            view = view[len(piece) :]
            if self._used == BUFFER_BYTES:
                self._flush(BUFFER_BYTES)

    def close(self) -> None:
        """Write what is buffered and close the file, cut to the bytes written."""
        if self._fd is None:
            return
        try:
            if self._used:
                padded = -(-self._used // _ALIGN) * _ALIGN  # the tail, padded to a whole block
                tail = self._used
                self._flush(padded)
                self._size -= padded - tail
                os.ftruncate(self._fd, self._size)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Close the file without writing what is buffered (its caller removes it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._used = 0

    def release(self) -> None:
        """Close any file and give the buffer back."""
        self.abandon()
        self._view.release()
        self._buffer.close()

    def _flush(self, length: int) -> None:
        try:
            self._write_all(self._view[:length])
        except OSError as e:
            # A file system that took O_DIRECT at open may still refuse these writes (a block size over
            # 4 KB): the rest of the file, and this piece, go through the page cache.
            if e.errno != errno.EINVAL or self._fd is None:
                raise
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self._direct = False
            os.lseek(self._fd, self._size, os.SEEK_SET)
            self._write_all(self._view[:length])
        self._size += length
        self._used = 0

    def _write_all(self, view: memoryview) -> None:
        assert self._fd is not None
        while view:
            view = view[os.write(self._fd, view) :]
