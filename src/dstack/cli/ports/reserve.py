"""Which local port each task port gets, and holding those ports from before submission (SPEC §4 step 3).

Two situations:
- The task runs on another machine (or the server is not on this one): the CLI listens on 127.0.0.1:L for
  every mapping and relays through the server. `*:N` takes N if it is free, else any free port.
- Same machine (the run's backend is `local` and the server URL is loopback): the task already listens on
  this machine, so a port the task itself holds is never bound twice. L == N (and `*:N`) needs no relay at
  all; L != N relays 127.0.0.1:L straight to 127.0.0.1:N, unless DSTACK_PORTS_VIA_SERVER=1 forces the
  general path through the server (for tests and benchmarks).

Ports the CLI will listen on are bound now (listening starts once the app answers), so nothing can take
them between this check and the attach. A busy one is one sentence with the `-p` fix.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dstack.cli.errors import CLIError

FORCE_SERVER_ENV = "DSTACK_PORTS_VIA_SERVER"
LOCAL_HOST = "127.0.0.1"


@dataclass
class Forward:
    container_port: int
    local_port: int
    # The bound (not yet listening) socket, or None where the task itself listens on local_port.
    listener: socket.socket | None
    direct: bool = False  # relay straight to 127.0.0.1:container_port (same machine) instead of the server
    # A unix socket the server named that reaches the port (a fleet host's SSH forward, the server being
    # on this machine): tried first, the server's relay if it cannot be used.
    socket_path: str | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.local_port}"

    def release(self) -> None:
        if self.listener is not None:
            try:
                # A thread blocked in accept() wakes only on shutdown, not on close.
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()


def same_machine(server_url: str, backends: Iterable[str]) -> bool:
    """True when the task will run on this machine: a loopback server and only the local backend."""
    found = list(backends)
    return bool(found) and all(b == "local" for b in found) and is_loopback_url(server_url)


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forced_via_server() -> bool:
    return os.environ.get(FORCE_SERVER_ENV, "").strip().lower() in ("1", "true", "yes")


def reserve(mappings: list[dict[str, Any]], *, local_task: bool, check_task_ports: bool) -> list[Forward]:
    """Bind what the CLI will listen on; raise CLIError (one sentence) for a busy port.

    `local_task`: the task runs on this machine. `check_task_ports`: also check that the ports the task
    will listen on here are free (before submission, when no task of ours holds them yet).
    """
    via_server = forced_via_server()
    forwards: list[Forward] = []
    try:
        for mapping in mappings:
            forwards.append(_reserve_one(mapping, local_task, check_task_ports, via_server))
    except BaseException:
        for forward in forwards:
            forward.release()
        raise
    return forwards


def _reserve_one(
    mapping: dict[str, Any], local_task: bool, check_task_ports: bool, via_server: bool
) -> Forward:
    port = int(mapping["container_port"])
    local = mapping.get("local_port")
    if local_task:
        if check_task_ports:
            check_free_here([port])
        if local is None and not via_server:
            local = port
        if local == port:
            return Forward(port, port, None)
        if local is None:
            # Forced through the server on one machine: never the task's own port, so any free one.
            listener = _bind(0)
            return Forward(port, listener.getsockname()[1], listener)
        return Forward(port, int(local), _bind_or_explain(int(local), port), direct=not via_server)
    if local is None:
        try:
            listener = _bind(port)
        except OSError:
            listener = _bind(0)
        return Forward(port, listener.getsockname()[1], listener)
    return Forward(port, int(local), _bind_or_explain(int(local), port))


def check_free_here(task_ports: list[int]) -> None:
    """The task will listen on these ports on this machine: refuse if another program holds one."""
    for port in task_ports:
        if not port_is_free(port):
            raise CLIError(
                f"Port {port} is in use on this machine, where the task must listen on it; "
                "stop the program that holds it, then run again"
            )


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Lets a new listener reuse a port whose old connections linger in TIME_WAIT; a port somebody
        # listens on stays refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOCAL_HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_or_explain(local: int, port: int) -> socket.socket:
    try:
        return _bind(local)
    except PermissionError:
        raise CLIError(
            f"Local port {local} needs privileges to listen on; forward task port {port} with "
            f"-p {suggest_port(port)}:{port}, or -p *:{port} for any free port"
        ) from None
    except OSError:
        raise CLIError(
            f"Local port {local} is in use; forward task port {port} to another one with "
            f"-p {suggest_port(local + 1)}:{port}, or -p *:{port} for any free port"
        ) from None


def port_is_free(port: int) -> bool:
    try:
        _bind(port).close()
    except OSError:
        return False
    return True


def suggest_port(start: int) -> int:
    """A free local port at or after `start` (nearby, so it is easy to remember), else any free one."""
    for candidate in range(max(start, 1024), min(max(start, 1024) + 100, 65536)):
        if port_is_free(candidate):
            return candidate
    with _bind(0) as sock:
        return int(sock.getsockname()[1])
