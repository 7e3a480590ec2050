"""The append-only output of one job: output.log (raw bytes) and output.idx (when each chunk arrived).

output.idx holds one fixed-size record per appended chunk: the chunk's byte offset in output.log and the
unix time it was read, so every line of output has a timestamp without touching the bytes themselves.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

LOG_FILE = "output.log"
INDEX_FILE = "output.idx"
_RECORD = struct.Struct("<Qd")
_splice = getattr(os, "splice", None)  # Linux, Python 3.10+
_splice_works = [True]


class LogStore:
    """Owns append / size / wait / read of a job's output. Safe to use from many threads."""

    def __init__(self, folder: Path, on_change: Optional[Callable[[], None]] = None) -> None:
        self.log_path = folder / LOG_FILE
        self._on_change = on_change  # told of every append and notify (the agent's job events)
        self.index_path = folder / INDEX_FILE
        self._changed = threading.Condition()
        # Opened for writing on the first append only: a finished job must not hold file descriptors.
        self._log_fd = -1
        self._index_fd = -1
        self._size = _file_size(self.log_path)
        # A crash in the middle of a record leaves a torn tail; it is ignored here and cut on append.
        self._records = _file_size(self.index_path) // _RECORD.size

    def close(self) -> None:
        """Stop appending (the job ended); reading stays possible."""
        with self._changed:
            for fd in (self._log_fd, self._index_fd):
                if fd >= 0:
                    os.close(fd)
            self._log_fd = self._index_fd = -1

    def _open_for_append(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        # Written at explicit offsets (the size so far), not O_APPEND: splice(2) refuses appending files.
        self._log_fd = os.open(self.log_path, flags, 0o644)
        self._index_fd = os.open(self.index_path, flags | os.O_APPEND, 0o644)
        os.ftruncate(self._index_fd, self._records * _RECORD.size)

    def size(self) -> int:
        with self._changed:
            return self._size

    def append(self, data: bytes, read_at: float) -> None:
        if not data:
            return
        with self._changed:
            if self._log_fd < 0:
                self._open_for_append()
            offset = self._size
            try:
                _write_all(self._log_fd, data, offset)
                _write_all(self._index_fd, _RECORD.pack(offset, read_at))
            except OSError:
                # E.g. a full disk: cut both files back so that offsets and index stay consistent.
                os.ftruncate(self._log_fd, offset)
                os.ftruncate(self._index_fd, self._records * _RECORD.size)
                raise
            # Published only after the bytes are in the file, so a reader never serves unwritten bytes.
            self._size = offset + len(data)
            self._records += 1
            self._changed.notify_all()
        if self._on_change is not None:
            self._on_change()

    def splice_from(self, pipe_fd: int, limit: int, read_at: float) -> Optional[int]:
        """Move what is in the pipe (up to `limit` bytes) to the end of the output in the kernel, never
        through Python: the bytes of a flood are not copied into the agent and out again. Returns how many
        moved (0 at the pipe's end), or None where splice(2) is unavailable (then read and append)."""
        if _splice is None or not _splice_works[0]:
            return None
        with self._changed:
            if self._log_fd < 0:
                self._open_for_append()
            offset = self._size
            try:
                moved = _splice(pipe_fd, self._log_fd, limit, offset_dst=offset)
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOSYS):
                    _splice_works[0] = False
                    return None
                raise
            if moved == 0:
                return 0
            try:
                _write_all(self._index_fd, _RECORD.pack(offset, read_at))
            except OSError:
                os.ftruncate(self._log_fd, offset)
                os.ftruncate(self._index_fd, self._records * _RECORD.size)
                raise
            self._size = offset + moved
            self._records += 1
            self._changed.notify_all()
        if self._on_change is not None:
            self._on_change()
        return moved

    def notify(self) -> None:
        """Wake the waiters: e.g. the job changed status, which long-polling readers must see."""
        with self._changed:
            self._changed.notify_all()
        if self._on_change is not None:
            self._on_change()

    def wait_for_change(self, offset: int, timeout: float, unchanged: Callable[[], bool]) -> None:
        """Block while size == offset and `unchanged()` holds, for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._size == offset and unchanged():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)

    def timestamps(self, offset: int, limit: int) -> Tuple[List[Tuple[int, float]], bool]:
        """Index entries whose chunk starts at or after `offset`: ([(offset, unix_time)], more)."""
        with self._changed:
            count = self._records
        if count == 0:
            return [], False
        with open(self.index_path, "rb") as f:
            first = _first_record_at_or_after(f.fileno(), count, offset)
            take = min(limit, count - first)
            raw = os.pread(f.fileno(), take * _RECORD.size, first * _RECORD.size) if take > 0 else b""
        entries = [(int(o), float(t)) for o, t in _RECORD.iter_unpack(raw)]
        return entries, first + take < count


def _first_record_at_or_after(fd: int, count: int, offset: int) -> int:
    low, high = 0, count
    while low < high:
        middle = (low + high) // 2
        record_offset, _ = _RECORD.unpack(os.pread(fd, _RECORD.size, middle * _RECORD.size))
        if record_offset < offset:
            low = middle + 1
        else:
            high = middle
    return low


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _write_all(fd: int, data: bytes, offset: Optional[int] = None) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[written:]
        if offset is not None:
            offset += written
