"""The append-only output of one job: output.log (raw bytes) and output.idx (when each chunk arrived).

A job's processes write straight into output.log (stdout and stderr share one O_APPEND file description,
so their order is kept), with no pipe and no reader in between: a job never gets SIGPIPE or blocks because
its agent died or hung, and a restarted agent carries on from the file as it finds it. The agent only
*publishes* what was written: `sync` (called by the output watcher as the file grows) moves the size that
readers may serve forward and records when those bytes were seen. The agent's own lines (which build a
job runs in) go through `append`, between the job's phases, when no process of the job writes.

output.idx holds one fixed-size record per published chunk: the chunk's byte offset in output.log and the
unix time it was seen, so every line of output has a timestamp without touching the bytes themselves.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from dstack.agent.writebehind import WriteBehind

LOG_FILE = "output.log"
INDEX_FILE = "output.idx"
JOBS_DIR = "jobs"  # under the agent's work folder: one folder per job, named by its id
_RECORD = struct.Struct("<Qd")
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def output_path(work_dir: Path, job_id: str) -> Path:
    """Where an agent with this work folder keeps a job's output.log (the local backend's server links
    it as its own copy: see dstack.server.services.logs)."""
    return work_dir / JOBS_DIR / job_id / LOG_FILE


def create_log(folder: Path) -> None:
    """Make a new job's empty output.log, so the file exists, at its one path, from the job's creation."""
    os.close(os.open(folder / LOG_FILE, _APPEND_FLAGS, 0o644))


class LogStore:
    """Owns append / sync / size / wait / read of a job's output. Safe to use from many threads."""

    def __init__(self, folder: Path, on_change: Optional[Callable[[], None]] = None) -> None:
        self.log_path = folder / LOG_FILE
        self._on_change = on_change  # told of every publication and notify (the agent's job events)
        self.index_path = folder / INDEX_FILE
        self._changed = threading.Condition()
        # Opened on the first append or sync only: a finished job must not hold file descriptors.
        self._log_fd = -1
        self._index_fd = -1
        # A crash in the middle of a record leaves a torn tail; it is ignored here and cut on the next write.
        self._records = _file_size(self.index_path) // _RECORD.size
        # What readers may serve: everything the index covers, and what was in the file when it was opened.
        self._size = _file_size(self.log_path)
        self._write_behind = WriteBehind(self._size)  # a flood of output goes to disk as it comes

    def close(self) -> None:
        """Stop publishing (the job ended); reading stays possible."""
        with self._changed:
            for fd in (self._log_fd, self._index_fd):
                if fd >= 0:
                    os.close(fd)
            self._log_fd = self._index_fd = -1

    def writer_fd(self) -> int:
        """A new O_APPEND descriptor of output.log for a job's processes (the caller closes it)."""
        return os.open(self.log_path, _APPEND_FLAGS, 0o644)

    def _open_for_append(self) -> None:
        if self._log_fd < 0:
            self._log_fd = os.open(self.log_path, _APPEND_FLAGS, 0o644)
            self._index_fd = os.open(self.index_path, _APPEND_FLAGS, 0o644)
            os.ftruncate(self._index_fd, self._records * _RECORD.size)

    def size(self) -> int:
        with self._changed:
            return self._size

    def sync(self, seen_at: Optional[float] = None) -> bool:
        """Publish what the job's processes appended since the last look; True if there was something."""
        with self._changed:
            grew = self._sync_locked(time.time() if seen_at is None else seen_at)
        if grew and self._on_change is not None:
            self._on_change()
        return grew

    def _sync_locked(self, seen_at: float) -> bool:
        if self._log_fd >= 0:
            size = os.fstat(self._log_fd).st_size
        else:
            size = _file_size(self.log_path)
            if size <= self._size:
                return False
            self._open_for_append()
        if size <= self._size:
            return False
        self._record(self._size, seen_at)
        self._size = size
        self._changed.notify_all()
        self._write_behind.advance(self._log_fd, size)
        return True

    def append(self, data: bytes, read_at: float) -> None:
        """Append the agent's own bytes (only while no process of the job writes to the file)."""
        if not data:
            return
        with self._changed:
            self._open_for_append()
            self._sync_locked(read_at)  # what the job wrote comes first
            offset = self._size
            try:
                _write_all(self._log_fd, data)
            except OSError:
                # E.g. a full disk: cut the file back so that offsets and index stay consistent.
                os.ftruncate(self._log_fd, offset)
                raise
            self._record(offset, read_at)
            # Published only after the bytes are in the file, so a reader never serves unwritten bytes.
            self._size = offset + len(data)
            self._changed.notify_all()
        if self._on_change is not None:
            self._on_change()

    def _record(self, offset: int, seen_at: float) -> None:
        try:
            _write_all(self._index_fd, _RECORD.pack(offset, seen_at))
        except OSError:
            os.ftruncate(self._index_fd, self._records * _RECORD.size)
            return  # a lost timestamp only makes `logs --timestamps` coarser; the bytes are served
        self._records += 1

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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
