"""Turning changes into the batches the agent applies (see dstack.agent.filesync): deletions first, then
folders, files and symlinks, parents first, as entries of the code's manifest form; each file named by the
sha256 of its content, which goes through the code store (only the contents the server lacks travel).

A burst (a git checkout) is one batch unless its files add up to more than MAX_BATCH_BYTES. A file
that cannot be sent is one warning and the rest of the batch goes on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dstack.cli.reload.changes import Changes
from dstack.cli.reload.tree import Entry, entry_from_stat, join

MAX_FILE_BYTES = 64 * 1024**2
MAX_BATCH_BYTES = 128 * 1024**2
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
    deletes: list[str] = field(default_factory=list)
    puts: list[tuple[str, Entry]] = field(default_factory=list)  # as read, for the index
    entries: list[list[Any]] = field(default_factory=list)  # [path, kind, mode, size, ref], in order
    contents: dict[str, bytes] = field(default_factory=dict)  # sha256 -> the bytes of a file put

    def __len__(self) -> int:
        return len(self.deletes) + len(self.puts)

    @property
    def content_bytes(self) -> int:
        return sum(len(data) for data in self.contents.values())


def build_batches(root: str, changes: Changes, warn: Callable[[str], None]) -> Iterator[Batch]:
    """The batches for these changes, built one at a time (the caller sends each before the next)."""
    batch = Batch(deletes=list(changes.ordered_deletes()))
    for rel, entry in changes.ordered_puts():
        if entry.kind == "dir":
            item: list[Any] = [rel, "d", entry.mode, 0, ""]
        elif entry.kind == "symlink":
            item = [rel, "l", entry.mode, 0, entry.target or ""]
        else:
            read = _read_file(join(root, rel), rel, warn)
            if read is None:
                continue
            data, entry = read
            if batch.puts and batch.content_bytes + len(data) > MAX_BATCH_BYTES:
                yield batch
                batch = Batch()
            sha256 = hashlib.sha256(data).hexdigest()
            batch.contents[sha256] = data
            item = [rel, "f", entry.mode, len(data), sha256]
        batch.entries.append(item)
        batch.puts.append((rel, entry))
    if len(batch):
        yield batch


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
