"""The server's end of a port tunnel to an agent (see dstack.agent.tunnel): an HTTP Upgrade, then raw bytes.

A plain asyncio Protocol rather than a StreamReader: the received chunks are handed on as they are (a
StreamReader would copy each byte twice more), which matters when a tunnel carries gigabytes.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any, cast
from urllib.parse import urlsplit

# The agent's own way to a port, used here as a library for ports of this machine (see connect_here).
from dstack.agent.tunnel import CONNECT_TIMEOUT_SECONDS, connect_port, tune

UPGRADE_PROTOCOL = "dstack-tcp"
MAX_HEAD = 64 * 1024
_HIGH_WATER = 2 * 1024 * 1024  # received but not yet sent on: pause reading above this
_READ_SIZE = 1024 * 1024


class TunnelRefused(Exception):
    """The agent answered the upgrade with an HTTP error; `status` and its one-sentence reason."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TunnelStream(asyncio.Protocol):
    """A TCP stream to a task's port: through an agent (the answer to the upgrade comes first), or, with
    `streaming`, a connection to the port itself (see `connect_here`)."""

    def __init__(self, streaming: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self._head: asyncio.Future[tuple[int, dict[str, str], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending = bytearray()  # bytes before the end of the response head
        self._streaming = streaming
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False

    # -- asyncio callbacks -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        if hasattr(transport, "max_size"):
            # The stdlib loop reads at most 256 KiB per call; bigger reads mean fewer, bigger frames.
            transport.max_size = _READ_SIZE

    def data_received(self, data: bytes) -> None:
        if not self._streaming:
            self._pending += data
            end = self._pending.find(b"\r\n\r\n")
            if end < 0:
                if len(self._pending) > MAX_HEAD:
                    self._fail(ValueError("the agent's answer to the upgrade is too long"))
                return
            head, rest = bytes(self._pending[:end]), bytes(self._pending[end + 4 :])
            self._pending = bytearray()
            try:
                status, headers = _parse_head(head)
            except ValueError as e:
                self._fail(e)
                return
            self._streaming = True
            if not self._head.done():
                self._head.set_result((status, headers, b""))
            if not rest:
                return
            data = rest
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.set()
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._readable.set()
        return True  # keep our writing side open: the other direction may still be sending (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._error = exc
        self._eof = True
        self._readable.set()
        self._writable.set()
        if not self._head.done():
            self._head.set_exception(exc or ConnectionResetError("the agent closed the connection"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- the stream --------------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """What arrived since the last read (b"" at the end of the stream); raises if the link broke."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def take_buffered(self) -> bytes:
        """Stop reading, and hand over what was received and not read yet (before a raw relay takes the
        connection: see services/tunnel.raw_relay)."""
        if self.transport is not None:
            self.transport.pause_reading()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise self._error or ConnectionResetError("the connection to the task's port is closed")
        self.transport.write(data)
        await self._writable.wait()

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close with a reset, so the other end learns the stream broke."""
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: BaseException) -> None:
        if not self._head.done():
            self._head.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    async def _response(self, timeout: float) -> tuple[int, dict[str, str]]:
        status, headers, _ = await asyncio.wait_for(asyncio.shield(self._head), timeout)
        return status, headers

    async def _body(self, length: int, timeout: float) -> bytes:
        deadline = asyncio.get_running_loop().time() + timeout
        body = b""
        while len(body) < length:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            chunk = await asyncio.wait_for(self.read(), remaining)
            if not chunk:
                break
            body += chunk
        return body


async def open_tunnel(
    url: str, token: str, job_id: str, port: int, *, timeout: float, socket_path: str | None = None
) -> TunnelStream:
    """Connect to the agent at `url` and upgrade to a raw stream to the job's port.

    Raises OSError / asyncio.TimeoutError when the agent is unreachable, TunnelRefused when it says no.
    """
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    connect = (
        loop.create_unix_connection(TunnelStream, socket_path)
        if socket_path is not None
        else loop.create_connection(TunnelStream, parts.hostname or "127.0.0.1", parts.port or 80)
    )
    _, stream = await asyncio.wait_for(connect, timeout)
    assert stream.transport is not None
    request = (
        f"GET /api/jobs/{job_id}/ports/{port}/connect HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Connection: Upgrade\r\nUpgrade: {UPGRADE_PROTOCOL}\r\n\r\n"
    )
    try:
        stream.transport.write(request.encode())
        status, headers = await stream._response(timeout)
        if status == 101:
            return stream
        length = min(int(headers.get("content-length", "0") or 0), MAX_HEAD)
        body = await stream._body(length, timeout)
    except BaseException:
        stream.abort()
        raise
    stream.close()
    raise TunnelRefused(_error_text(body, status), status)


async def connect_here(port: int) -> TunnelStream:
    """A stream to a task port of this machine (the local backend's tasks listen on its loopback), made
    by the server itself: one relay fewer than through the agent. Raises OSError when nothing answers."""
    sock = await asyncio.to_thread(connect_port, port, CONNECT_TIMEOUT_SECONDS)
    tune(sock)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        _, stream = await loop.create_connection(lambda: TunnelStream(streaming=True), sock=sock)
    except BaseException:
        sock.close()
        raise
    return stream


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(rest.split(" ", 1)[0])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def _error_text(body: bytes, status: int) -> str:
    try:
        data: Any = json.loads(body)
        return str(data["error"])
    except (ValueError, KeyError, TypeError):
        return f"the agent answered HTTP {status}"
