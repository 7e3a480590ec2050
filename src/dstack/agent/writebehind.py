"""Write-behind for a growing output file: its bytes go to disk as they come, and leave the page cache
once they are well behind the end, where every reader of a live stream is.

Why: a job that prints gigabytes would otherwise fill the page cache with dirty pages, written back by the
kernel tens of seconds later. On a VM each page the page cache takes from memory the guest never touched
(or gave back to its host) costs a fault in the host, and a file write into such pages runs at about half
the speed of one into pages just freed: 280 vs 570 MB/s for `seq` here. Starting the writeback of each
new stretch at once (`sync_file_range`, which does not wait) and dropping clean pages far behind the end
(`POSIX_FADV_DONTNEED`, which skips pages still dirty or under writeback) hands those very pages back to
the writer. The bytes are the same bytes, written to disk sooner; a reader that falls far behind reads
them from the disk instead of the cache. Small outputs never reach a step and cost one comparison.

Standard library only (ctypes for sync_file_range): the agent and the server share it.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Optional

STEP = 16 * 1024 * 1024  # bytes between two writeback requests, and between two drops
LAG = 64 * 1024 * 1024  # what stays cached behind the end: live readers are much closer than this
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Optional[Any]:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: the kernel's own writeback is all there is
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


class WriteBehind:
    """Follows one file's end (`advance`), through any descriptor of the file; never changes its bytes."""

    def __init__(self, start: int = 0) -> None:
        # What was there before is not this follower's: a restarted agent starts at the file's end.
        self._requested = start
        self._dropped = start

    def advance(self, fd: int, end: int) -> None:
        """The file now holds `end` bytes."""
        if end - self._requested < STEP or _sync_file_range is None:
            return
        # Not waited for: the writer keeps writing while the disk takes the stretch.
        _sync_file_range(fd, self._requested, end - self._requested, _SYNC_FILE_RANGE_WRITE)
        self._requested = end
        behind = self._requested - LAG
        if behind - self._dropped >= STEP:
            try:
                os.posix_fadvise(fd, self._dropped, behind - self._dropped, os.POSIX_FADV_DONTNEED)
            except OSError:
                return  # a file system that cannot: the cache keeps the pages, nothing else changes
            self._dropped = behind
