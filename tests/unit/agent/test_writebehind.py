"""Write-behind of growing output files (agent/writebehind.py): a flood of output is handed to the disk as it
comes and leaves the page cache far behind its end, in the agent's output.log and in the server's own copy,
with every byte kept; small outputs are left alone."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import subprocess
from pathlib import Path

import pytest

from dstack.agent import writebehind
from dstack.agent.logstore import LogStore, create_log
from dstack.server.services import logs
from dstack.server.settings import ServerSettings

MB = 1024 * 1024
CHUNK = 4 * MB


def _resident(path: Path, start: int, end: int) -> float:
    """The share of the file's pages in [start, end) that are in the page cache (mincore(2))."""
    page = mmap.PAGESIZE
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        try:
            pages = (end - start + page - 1) // page
            vector = (ctypes.c_ubyte * pages)()
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            if libc.mincore(ctypes.c_void_p(address + start), end - start, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(v & 1 for v in vector) / pages
        finally:
            del address  # the buffer export must end before the map closes


def _disk_backed(path: Path) -> bool:
    """Page-cache eviction means nothing on tmpfs, whose pages are the files themselves."""
    found = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout
    return found.strip() not in {"tmpfs", "ramfs"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    if writebehind._sync_file_range is None or not _disk_backed(tmp_path):
        pytest.skip("needs Linux's sync_file_range and a disk-backed folder")
    return tmp_path


def _block(i: int) -> bytes:
    return (b"%07d\n" % i) * (CHUNK // 8)


def test_a_flood_in_the_agents_output_leaves_the_cache_far_behind_its_end_with_every_byte_kept(
    folder: Path,
) -> None:
    create_log(folder)
    store = LogStore(folder)
    written = hashlib.sha256()
    total = 160 * MB
    writer = store.writer_fd()  # as a job's processes write, straight into the file
    try:
        for i in range(total // CHUNK):
            block = _block(i)
            os.write(writer, block)
            written.update(block)
            assert store.sync()
    finally:
        os.close(writer)
    path = store.log_path
    assert store.size() == path.stat().st_size == total
    far_behind = total - writebehind.LAG - writebehind.STEP
    # Pages still under writeback when their stretch was dropped stay; most must be gone.
    assert _resident(path, 0, far_behind) < 0.5
    assert _resident(path, total - 16 * MB, total) > 0.9  # where live readers are stays cached
    assert hashlib.sha256(path.read_bytes()).digest() == written.digest()
    store.close()


def test_small_output_stays_cached(folder: Path) -> None:
    create_log(folder)
    store = LogStore(folder)
    writer = store.writer_fd()
    try:
        for i in range(3):
            os.write(writer, _block(i))
            store.sync()
    finally:
        os.close(writer)
    assert _resident(store.log_path, 0, 3 * CHUNK) > 0.9
    store.close()


def test_the_servers_own_copy_is_written_behind_too(folder: Path) -> None:
    settings = ServerSettings(server_dir=folder / "server")
    settings.logs_dir.mkdir(parents=True)
    appender = logs.LogAppender(settings, "job")  # a remote host's output: copied here
    assert not appender.shared
    written = hashlib.sha256()
    total = 160 * MB
    for i in range(total // CHUNK):
        block = _block(i)
        appender.append(block)
        written.update(block)
    appender.close()
    path = logs.log_path(settings, "job")
    assert appender.size == path.stat().st_size == total
    assert _resident(path, 0, total - writebehind.LAG - writebehind.STEP) < 0.5
    assert hashlib.sha256(path.read_bytes()).digest() == written.digest()
