"""The server's copy of each job's output: one append-only file per job, mirrored from its agent.

Offsets are byte offsets into that file, the same as the agent's, so a reader that reconnects from the
offset it reached gets every byte once.
"""

from __future__ import annotations

import os
from pathlib import Path

from dstack.server.settings import ServerSettings

READ_CHUNK = 1024 * 1024


def log_path(settings: ServerSettings, job_id: str) -> Path:
    return settings.logs_dir / f"{job_id}.log"


def size(settings: ServerSettings, job_id: str) -> int:
    try:
        return log_path(settings, job_id).stat().st_size
    except FileNotFoundError:
        return 0


def remove(settings: ServerSettings, job_id: str) -> None:
    log_path(settings, job_id).unlink(missing_ok=True)


class LogAppender:
    """Appends to a job's file. Only the job's supervisor writes; readers may read at any time."""

    def __init__(self, settings: ServerSettings, job_id: str) -> None:
        path = log_path(settings, job_id)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size

    @property
    def fd(self) -> int:
        """For writers that append on their own (e.g. straight from a socket); they report with `grew`."""
        return self._fd

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def grew(self, count: int) -> None:
        self.size += count

    def close(self) -> None:
        os.close(self._fd)


class LogReader:
    """Reads one job's file from any offset, through one descriptor kept open (a stream reads it often)."""

    def __init__(self, settings: ServerSettings, job_id: str) -> None:
        self.job_id = job_id
        self._path = log_path(settings, job_id)
        self._fd = -1

    def read(self, offset: int, limit: int = READ_CHUNK) -> bytes:
        if self._fd < 0:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""
        return os.pread(self._fd, limit, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read(path: Path, offset: int, limit: int = READ_CHUNK) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def tail_offset(path: Path, lines: int) -> int:
    """The offset where the last `lines` lines start (a trailing newline does not start a line)."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            if lines <= 0:
                return end
            pos = end
            newlines = 0
            block = 64 * 1024
            skip_last = True
            while pos > 0:
                start = max(0, pos - block)
                f.seek(start)
                chunk = f.read(pos - start)
                for i in range(len(chunk) - 1, -1, -1):
                    if chunk[i] != 0x0A:
                        skip_last = False
                        continue
                    if skip_last and start + i == end - 1:
                        skip_last = False
                        continue
                    newlines += 1
                    if newlines == lines:
                        return start + i + 1
                pos = start
            return 0
    except FileNotFoundError:
        return 0
