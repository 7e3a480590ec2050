"""A job's ports for the server: whether one answers yet, and a raw TCP relay to it.

Tasks listen on the host's network, so a task port is 127.0.0.1:PORT (or [::1]:PORT) here. The server
reaches one with an authenticated `GET /api/jobs/{id}/ports/{port}/connect` carrying `Connection: Upgrade`
and `Upgrade: dstack-tcp`; the agent connects to the port, answers `101 Switching Protocols`, and from then
on the HTTP connection carries the TCP stream's bytes both ways, half-closes included. The caller must wait
for the 101 before it sends any byte of the stream. Only ports the job declared are reachable, and only
while it runs.

The relay uses splice(2) where Python has it (3.10+ on Linux), so the bytes never enter user space.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, List, Optional, Tuple

from dstack.agent.httpserver import ApiError, Exchange, Route
from dstack.agent.jobs.job import RUNNING, Job

if TYPE_CHECKING:
    from dstack.agent.jobs.registry import JobRegistry

UPGRADE_PROTOCOL = "dstack-tcp"
PROBE_INTERVAL_SECONDS = 0.025  # a refused connect costs microseconds; the URL comes sooner
MAX_WAIT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 5.0
_CHUNK = 256 * 1024
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_splice = getattr(os, "splice", None)
# Keepalive on relayed sockets: a peer that vanished without a FIN is noticed in about 10 s.
_KEEPALIVE = (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))


class PortRoutes:
    """The two port routes of the agent API."""

    def __init__(self, registry: JobRegistry) -> None:
        self._registry = registry

    def routes(self) -> List[Route]:
        job_port = r"/api/jobs/(?P<job_id>[^/]+)/ports/(?P<port>[0-9]{1,5})"
        return [
            Route("GET", job_port, self.port_status),
            Route("GET", job_port + r"/connect", self.connect),
        ]

    def port_status(self, exchange: Exchange) -> None:
        """{"port", "open", "status"}; with `wait=S`, answers as soon as the port opens (at most S s)."""
        job, port = self._job_port(exchange)
        wait = min(max(exchange.query_number("wait", 0.0), 0.0), MAX_WAIT_SECONDS)
        is_open = wait_until_open(job, port, wait)
        exchange.send_json(HTTPStatus.OK, {"port": port, "open": is_open, "status": job.state.status})

    def connect(self, exchange: Exchange) -> None:
        job, port = self._job_port(exchange)
        if job.state.status != RUNNING:
            raise ApiError(HTTPStatus.CONFLICT, f"Job {job.id} is {job.state.status}, not running")
        if exchange.header("Upgrade").strip().lower() != UPGRADE_PROTOCOL:
            raise ApiError(
                HTTPStatus.UPGRADE_REQUIRED, f"Send 'Connection: Upgrade' and 'Upgrade: {UPGRADE_PROTOCOL}'"
            )
        try:
            target = connect_port(port, CONNECT_TIMEOUT_SECONDS)
        except OSError as e:
            raise ApiError(HTTPStatus.BAD_GATEWAY, port_refused(port, e)) from None
        try:
            client = exchange.switch_protocols(UPGRADE_PROTOCOL)
        except OSError:
            target.close()
            raise
        relay(client, target)

    def _job_port(self, exchange: Exchange) -> Tuple[Job, int]:
        job_id = exchange.params["job_id"]
        job = self._registry.get(job_id)
        if job is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"Job {job_id[:64]} not found")
        port = int(exchange.params["port"])
        if port not in job.spec.ports:
            declared = ", ".join(str(p) for p in job.spec.ports) or "none"
            raise ApiError(
                HTTPStatus.NOT_FOUND, f"Job {job.id} does not declare port {port} (its ports: {declared})"
            )
        return job, port


def connect_port(port: int, timeout: float) -> socket.socket:
    """A connection to the task's port on this host: IPv4 loopback first, then IPv6."""
    first: Optional[OSError] = None
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:  # e.g. no IPv6 on this host
            first = first or e
            continue
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError as e:
            sock.close()
            first = first or e  # the IPv4 error says more than "no IPv6 here"
            continue
        sock.settimeout(None)
        return sock
    assert first is not None
    raise first


def port_answers(port: int) -> bool:
    try:
        connect_port(port, 1.0).close()
    except OSError:
        return False
    return True


def wait_until_open(job: Job, port: int, wait: float) -> bool:
    """True once the port accepts connections while the job runs; False if it ends or `wait` passes."""
    deadline = time.monotonic() + wait
    while True:
        if job.state.is_final:
            return False
        if job.state.status == RUNNING and port_answers(port):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # The job's end wakes this at once; otherwise probe again shortly.
        job.finished.wait(min(PROBE_INTERVAL_SECONDS, remaining))


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both directions end, then close both sockets.

    An end of stream on one side becomes a half-close (shutdown for writing) on the other, so protocols
    that half-close work. An error on either side (a reset, a dead peer) ends both at once, and the other
    side is reset too, as a direct connection would have been.
    """
    for sock in (a, b):
        tune(sock)
    link = _Link(a, b)
    other = threading.Thread(target=link.pump, args=(b, a), name="relay", daemon=True)
    other.start()
    link.pump(a, b)
    other.join()
    link.close()


def tune(sock: socket.socket, user_timeout_ms: Optional[int] = None) -> None:
    """No Nagle delay (relayed requests must not wait), and keepalive probes to notice a dead peer; with
    `user_timeout_ms`, unacknowledged data for that long ends the connection too."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in _KEEPALIVE:
                option = getattr(socket, name, None)
                if option is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
            user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
            if user_timeout_ms is not None and user_timeout is not None:
                sock.setsockopt(socket.IPPROTO_TCP, user_timeout, user_timeout_ms)
    except OSError:
        pass  # the socket is already gone; the relay notices on its first read


class _Link:
    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self._sockets = (a, b)
        self._failed = False

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            if _splice is not None and not _copy_only(src, dst):
                _splice_until_eof(src, dst)
            else:
                _copy_until_eof(src, dst)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            self._fail()

    def _fail(self) -> None:
        self._failed = True
        for sock in self._sockets:
            try:
                # Wakes the other direction's blocked read at once (close alone would not).
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for sock in self._sockets:
            if self._failed:
                _reset_on_close(sock)
            sock.close()


def _copy_only(src: socket.socket, dst: socket.socket) -> bool:
    # splice needs plain kernel sockets; a TLS socket (or a non-socket object) gets the copy loop.
    return type(src) is not socket.socket or type(dst) is not socket.socket


def _splice_until_eof(src: socket.socket, dst: socket.socket) -> None:
    assert _splice is not None
    read_end, write_end = os.pipe()
    try:
        try:
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # the default pipe size only costs a few more calls
        src_fd, dst_fd = src.fileno(), dst.fileno()
        while True:
            try:
                count = _splice(src_fd, write_end, _PIPE_SIZE)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # This kind of socket cannot be spliced: copy instead.
                _copy_until_eof(src, dst)
                return
            if count == 0:
                return
            while count:
                count -= _splice(read_end, dst_fd, count)
    finally:
        os.close(read_end)
        os.close(write_end)


def _copy_until_eof(src: socket.socket, dst: socket.socket) -> None:
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    while True:
        count = src.recv_into(view)
        if not count:
            return
        dst.sendall(view[:count])


def _reset_on_close(sock: socket.socket) -> None:
    try:
        # Linger 0: close sends a reset, so the peer learns the stream broke instead of seeing a clean end.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def port_refused(port: int, error: OSError) -> str:
    """The sentence for a task port that did not take a connection."""
    return f"Nothing answers on port {port} of the task ({_reason(error)})"


def _reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "no answer in time"
    return error.strerror or str(error)
