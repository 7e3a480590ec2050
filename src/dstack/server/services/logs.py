"""The server's copy of each job's output: one append-only file per job, mirrored from its agent.

Offsets are byte offsets into that file, the same as the agent's, so a reader that reconnects from the
offset it reached gets every byte once.

Where the agent writes the job's output.log on this machine's disk as this user (the local backend), the
server's copy is that very file: a hard link made when the supervisor starts following the job, before
any byte is read. A byte of output is then written once on this disk, by the task, instead of twice (the
task's write, then the server's copy of it: on these VMs each new page of the page cache is the slow part
of a write), the agent serves no output to the server, and deleting the agent's job folder leaves the
server's link. Everything else holds as with a copy: offsets are the file's, the supervisor counts what
the agent published, and output is in the file before the final status is recorded.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from dstack.agent.writebehind import WriteBehind
from dstack.server.settings import ServerSettings

READ_CHUNK = 1024 * 1024


def log_path(settings: ServerSettings, job_id: str) -> Path:
    return settings.logs_dir / f"{job_id}.log"


def size(settings: ServerSettings, job_id: str, bound: int | None = None) -> int:
    """The size of the job's output; never more than `bound` (the run output limit: see LogReader)."""
    try:
        found = log_path(settings, job_id).stat().st_size
    except FileNotFoundError:
        return 0
    return found if bound is None else min(found, bound)


def remove(settings: ServerSettings, job_id: str) -> None:
    log_path(settings, job_id).unlink(missing_ok=True)


class LogAppender:
    """Appends to a job's file. Only the job's supervisor writes; readers may read at any time.

    With `source` (the agent's own output file, see the module's docstring), the job's file becomes that
    file where it can (`shared`): then nothing is appended and `grew` only counts what the agent published.
    """

    def __init__(self, settings: ServerSettings, job_id: str, source: Path | None = None) -> None:
        self._path = log_path(settings, job_id)
        self.shared = source is not None and _share(source, self._path)
        self._fd = os.open(self._path, _APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size
        # A copy of the server's own goes to disk as it comes (a shared file is the agent's to follow).
        self._write_behind = WriteBehind(self.size)

    @property
    def fd(self) -> int:
        """For writers that append on their own (e.g. straight from a socket); they report with `grew`."""
        return self._fd

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.grew(len(data))

    def grew(self, count: int) -> None:
        self.size += count
        if not self.shared:
            self._write_behind.advance(self._fd, self.size)

    def unshare(self, keep: int) -> None:
        """Keep the bytes counted so far, at most `keep`, in a file of the server's own: what the agent's
        file gets from now on (a run over its output quota, being stopped) is no longer the server's copy."""
        if not self.shared:
            return
        self.size = min(self.size, keep)
        spare = self._path.with_name(f".{self._path.name}.{secrets.token_hex(4)}")
        source = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        copied = 0
        try:
            # Not O_APPEND: sendfile refuses to write to such a file.
            target = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                while copied < self.size:
                    count = os.sendfile(target, source, copied, self.size - copied)
                    if count == 0:
                        break  # the file is shorter than counted (cut by hand): keep what it has
                    copied += count
            finally:
                os.close(target)
            spare.replace(self._path)
        except BaseException:
            spare.unlink(missing_ok=True)
            raise
        finally:
            os.close(source)
        os.close(self._fd)
        self._fd = os.open(self._path, _APPEND, 0o600)
        self.size, self.shared = copied, False
        self._write_behind = WriteBehind(self.size)

    def close(self) -> None:
        os.close(self._fd)


_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def _share(source: Path, path: Path) -> bool:
    """Make `path` a hard link of the agent's output file `source`, or find it one already (a restarted
    server); False where it cannot be (another file system, a file not this user's own and private, a
    copy begun before): the caller copies then."""
    try:
        # Opened, checked, then linked through its descriptor: what is linked is the file checked, even
        # if the path were swapped in between; a symlink is refused.
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            return False
        try:
            existing = path.lstat()
        except FileNotFoundError:
            existing = None
        if existing is not None:
            return (existing.st_dev, existing.st_ino) == (info.st_dev, info.st_ino)
        if info.st_nlink != 1:
            return False  # linked elsewhere already: not a file only the agent made
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # With a dir_fd Python calls linkat(AT_SYMLINK_FOLLOW), which follows /proc's link to the open
            # file itself (plain link() would try to link the /proc link and fail).
            os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder, follow_symlinks=True)
        except OSError:
            return False  # EXDEV, no /proc, no hard links here, or a copy created meanwhile
        finally:
            os.close(folder)
        return True
    finally:
        os.close(fd)


class LogReader:
    """Reads one job's file from any offset, through one descriptor kept open (a stream reads it often).

    Never past `bound`, the run output limit: a file shared with the agent holds what the run printed past
    it until the supervisor, seeing the run over its quota, cuts the server's copy there (see
    LogAppender.unshare); no reader shows those bytes meanwhile. A copy never holds more.
    """

    def __init__(self, settings: ServerSettings, job_id: str, bound: int | None = None) -> None:
        self.job_id = job_id
        self._path = log_path(settings, job_id)
        self._bound = bound
        self._fd = -1

    def read(self, offset: int, limit: int = READ_CHUNK) -> bytes:
        if self._bound is not None:
            limit = min(limit, self._bound - offset)
            if limit <= 0:
                return b""
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


def tail_offset(path: Path, lines: int, bound: int | None = None) -> int:
    """The offset where the last `lines` lines start (a trailing newline does not start a line), of the
    file's first `bound` bytes."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            if bound is not None:
                end = min(end, bound)
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
