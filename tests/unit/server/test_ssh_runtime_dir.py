"""The SSH layer's socket folder lives as long as its server: nothing is left in /tmp after it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from dstack.server.ssh.pool import SSHPool


def test_the_socket_folder_goes_with_the_pool(tmp_path: Path) -> None:
    long_server_dir = tmp_path / ("x" * 70) / "server"  # too long for unix socket paths: /tmp is used
    pool = SSHPool(long_server_dir / "ssh")
    runtime = pool._runtime
    assert runtime.is_dir() and not runtime.is_relative_to(tmp_path)
    assert runtime.stat().st_mode & 0o077 == 0
    asyncio.run(pool.close())
    assert not runtime.exists()


def test_a_short_server_path_keeps_its_sockets_under_the_server() -> None:
    short = Path(tempfile.mkdtemp(prefix="d"))  # pytest's own folders are too long for this case
    try:
        pool = SSHPool(short / "ssh")
        assert pool._runtime == short / "ssh" / "run"
        asyncio.run(pool.close())
        assert not pool._runtime.exists() and (short / "ssh").is_dir()
    finally:
        shutil.rmtree(short)
