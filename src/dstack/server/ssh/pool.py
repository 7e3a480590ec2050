"""The server's one SSH layer: a connection per host, shared by everything that talks to that host.

Backends (fleet hosts, Slurm login nodes) ask the pool for a host's connection; nothing else starts ssh.
Host keys are pinned in one known_hosts file under the server's folder: `open(pin=True)` (at
`dstack apply`) records an unknown key, and every later connection requires the pinned one.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from dstack.server.ssh.connection import SSHConnection, runtime_dir
from dstack.server.ssh.target import SSHTarget


class SSHPool:
    def __init__(self, state_dir: Path) -> None:
        """`state_dir`: the server's private SSH folder (known_hosts; sockets where the path is short)."""
        self.state_dir = state_dir
        self.known_hosts = state_dir / "known_hosts"
        self._runtime = runtime_dir(state_dir.parent)
        self._connections: dict[SSHTarget, SSHConnection] = {}

    def connection(self, target: SSHTarget) -> SSHConnection:
        """The (lazily opened) connection to `target`; every call on it connects or reconnects as needed."""
        found = self._connections.get(target)
        if found is None:
            jump = self.connection(target.proxy_jump) if target.proxy_jump is not None else None
            found = SSHConnection(target, self._runtime, self.known_hosts, jump=jump)
            self._connections[target] = found
        return found

    async def forget(self, target: SSHTarget, *, unpin: bool = False) -> None:
        """Close the connection (a host removed from its fleet); `unpin` also drops its pinned host key."""
        connection = self._connections.pop(target, None)
        if connection is not None:
            await connection.close()
        if unpin and self.known_hosts.exists():
            process = await asyncio.create_subprocess_exec(
                "ssh-keygen",
                "-R",
                target.known_hosts_name,
                "-f",
                str(self.known_hosts),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await process.wait()
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.known_hosts}.old").unlink()

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close()
        # The sockets' folder goes with the server, where it is empty (in /tmp for a long server path).
        with contextlib.suppress(OSError):
            self._runtime.rmdir()
