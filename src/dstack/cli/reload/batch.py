"""Packing changes into the batches the agent applies (see dstack.agent.filesync): one tar per request,
deletions first (PAX keyword DSTACK.delete), then folders, files and symlinks, parents first.

A burst (a git checkout) is one batch unless its files add up to more than MAX_BATCH_BYTES. A file
that cannot be sent is one warning and the rest of the batch goes on.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from dstack.cli.reload.changes import Changes
from dstack.cli.reload.tree import Entry, entry_from_stat, join

DELETE_KEYWORD = "DSTACK.delete"  # the same as dstack.agent.filesync.DELETE_KEYWORD
MAX_FILE_BYTES = 64 * 1024**2
MAX_BATCH_BYTES = 128 * 1024**2
_SPOOL_IN_MEMORY = 8 * 1024**2
# Never follow a file swapped for a symlink, nor hang on one swapped for a fifo.
READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


@dataclass
class Batch:
    body: IO[bytes]
    length: int
    deletes: list[str] = field(default_factory=list)
    puts: list[tuple[str, Entry]] = field(default_factory=list)  # as read, for the index

    def __len__(self) -> int:
        return len(self.deletes) + len(self.puts)


class _Writer:
    def __init__(self) -> None:
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        self.tar = tarfile.open(fileobj=self.spool, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.batch = Batch(self.spool, 0)
        self.content_bytes = 0

    def add(self, info: tarfile.TarInfo, data: bytes | None = None) -> None:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if data is None:
            self.tar.addfile(info)
        else:
            info.size = len(data)
            self.tar.addfile(info, io.BytesIO(data))
            self.content_bytes += len(data)

    def finish(self) -> Batch:
        self.tar.close()
        self.batch.length = self.spool.tell()
        self.spool.seek(0)
        return self.batch


def build_batches(root: str, changes: Changes, warn: Callable[[str], None]) -> Iterator[Batch]:
    """The batches for these changes, built one at a time (the caller sends each before the next)."""
    writer = _Writer()
    for rel in changes.ordered_deletes():
        info = tarfile.TarInfo(rel)
        info.pax_headers = {DELETE_KEYWORD: "1"}
        writer.add(info)
        writer.batch.deletes.append(rel)
    for rel, entry in changes.ordered_puts():
        info = tarfile.TarInfo(rel)
        info.mode = entry.mode
        info.mtime = entry.mtime_ns // 1_000_000_000
        data: bytes | None = None
        if entry.kind == "dir":
            info.type = tarfile.DIRTYPE
        elif entry.kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = entry.target or ""
        else:
            read = _read_file(join(root, rel), rel, warn)
            if read is None:
                continue
            data, entry = read
            info.mode = entry.mode
            if writer.batch.puts and writer.content_bytes + len(data) > MAX_BATCH_BYTES:
                yield writer.finish()
                writer = _Writer()
        writer.add(info, data)
        writer.batch.puts.append((rel, entry))
    if len(writer.batch):
        yield writer.finish()


def _read_file(path: str, rel: str, warn: Callable[[str], None]) -> tuple[bytes, Entry] | None:
    """The file's bytes and its entry as read; None (after a warning where it helps) if it cannot go."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as e:
        # Gone or turned into a symlink since it was listed: the watcher reports that change next.
        if e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            warn(f"cannot read {rel} ({e.strerror}); it is not sent")
        return None
    with os.fdopen(fd, "rb") as f:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return None
        if status.st_size > MAX_FILE_BYTES:
            size, limit = _mb(status.st_size), _mb(MAX_FILE_BYTES)
            warn(f"{rel} is {size}, over the {limit} limit for one file; it is not sent")
            return None
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            warn(f"cannot read {rel} ({e.strerror}); it is not sent")
            return None
    if len(data) > MAX_FILE_BYTES:
        warn(f"{rel} grew over the {_mb(MAX_FILE_BYTES)} limit for one file; it is not sent")
        return None
    entry = entry_from_stat(status, path)
    return (data, entry) if entry is not None else None


def _mb(size: int) -> str:
    return f"{size / 1024**2:.0f} MB"
