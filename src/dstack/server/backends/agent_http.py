"""A small HTTP/1.1 client for the agent's JSON and log calls, with kept-alive connections.

The server makes a few calls to an agent for every job (submit, a log poll or two, delete). Through httpx
each cost ~2.5 ms of the event loop's CPU on a small machine, a third of the server's whole work per job;
this client does the same exchange in a fraction of that. It speaks exactly what the agent speaks:
HTTP/1.1, `Content-Length` bodies (no chunked transfer), keep-alive unless a side says `close`.
Anything else (streamed uploads) stays on httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import select
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlencode, urlsplit

MAX_HEADER_BYTES = 64 * 1024
_FETCH_BUFFER = 4 * 1024 * 1024
_F_SETPIPE_SZ = 1031  # Linux
_PIPE_SIZE = 1024 * 1024


class TransportError(Exception):
    """No usable answer: the connection failed, was cut, timed out, or the reply was not HTTP."""


class Headers(dict[str, str]):
    """Response headers; names compare case-insensitively, as in HTTP."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class Response:
    def __init__(self, status_code: int, headers: Headers, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class AgentHTTP:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        max_connections: int = 64,
        socket_path: str | None = None,
    ) -> None:
        """`socket_path`: connect to this unix socket (e.g. an SSH forward to a remote agent) instead of
        the URL's host and port, which then only name the agent in the Host header."""
        parts = urlsplit(base_url)
        self._socket_path = socket_path
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{base_url} is not an http:// URL")
        self._host = parts.hostname
        self._port = parts.port or 80
        host_header = f"[{self._host}]" if ":" in self._host else self._host
        self._headers = {"Host": f"{host_header}:{self._port}", "Connection": "keep-alive", **headers}
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        raw_body: bytes | None = None,
        stream: StreamBody | None = None,
        timeout: float,
    ) -> Response:
        """One exchange. The body is JSON, raw bytes, or a StreamBody."""
        if params:
            path = f"{path}?{urlencode(params)}"
        body = json.dumps(json_body).encode() if json_body is not None else (raw_body or b"")
        head = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in self._headers.items())]
        if json_body is not None:
            head.append("Content-Type: application/json")
        elif raw_body is not None or stream is not None:
            head.append("Content-Type: application/octet-stream")
        length = len(body) if stream is None else stream.length
        if length or method in ("POST", "PUT"):
            head.append(f"Content-Length: {length}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        if stream is None:
            return await self._exchange_retrying(lambda c: self._exchange(c, method, message), timeout)
        # A streamed body that met a closed kept-alive connection is sent again whole: its parts are
        # produced anew from the start.
        return await self._exchange_retrying(lambda c: self._stream(c, method, message, stream), timeout)

    async def _exchange_retrying(
        self, exchange: Callable[[_Connection], Awaitable[tuple[Response, bool]]], timeout: float
    ) -> Response:
        async with self._slots:
            # A kept-alive connection the agent closed while it idled fails at once, before any reply:
            # then the request goes again on a fresh connection (the agent's calls are idempotent).
            for attempt in (1, 2):
                connection, reused = await self._connection(timeout)
                try:
                    response, keep = await asyncio.wait_for(exchange(connection), timeout)
                except asyncio.TimeoutError:
                    _close(connection)
                    raise TransportError(f"no answer within {timeout:g} s") from None
                except (_Stale, BrokenPipeError, ConnectionResetError) as e:
                    _close(connection)
                    if reused and attempt == 1:
                        continue
                    raise TransportError(str(e) or "the connection was closed before an answer") from None
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    _close(connection)
                    raise TransportError(str(e) or type(e).__name__) from e
                if keep and not self._closed:
                    self._idle.append(connection)
                else:
                    _close(connection)
                return response
        raise AssertionError("unreachable")

    async def _stream(
        self, connection: _Connection, method: str, message: bytes, stream: StreamBody
    ) -> tuple[Response, bool]:
        writer = connection[1]
        writer.write(message)
        sent_total = 0
        for part in stream.parts():
            if isinstance(part, bytes):
                writer.write(part)
                sent_total += len(part)
                if writer.transport.get_write_buffer_size() > _HIGH_WATER:
                    await writer.drain()
                continue
            path, size = part
            with open(path, "rb") as file:  # noqa: ASYNC230 (a local file: opening it does not wait)
                # uvloop has no sendfile: the file goes in big reads, each written as it is read.
                sent = 0
                while chunk := file.read(min(_FILE_CHUNK, size - sent)):
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
            if sent != size:
                raise ValueError(f"{path} ended after {sent} of {size} bytes")
            sent_total += size
        if sent_total != stream.length:
            raise ValueError(f"the body was {sent_total} bytes, not the {stream.length} announced")
        return await self._exchange(connection, method, b"")

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            _close(self._idle.pop())

    async def _connection(self, timeout: float) -> tuple[_Connection, bool]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return (reader, writer), True
            writer.close()
        try:
            connect = (
                asyncio.open_unix_connection(self._socket_path)
                if self._socket_path is not None
                else asyncio.open_connection(self._host, self._port)
            )
            opened = await asyncio.wait_for(connect, timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise TransportError(f"cannot connect: {e or type(e).__name__}") from e
        return opened, False

    async def _exchange(self, connection: _Connection, method: str, message: bytes) -> tuple[Response, bool]:
        reader, writer = connection
        if message:
            writer.write(message)
        await writer.drain()
        try:
            status_line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise _Stale() from None
            raise
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP reply: {status_line[:80]!r}")
        status = int(parts[1])
        headers = Headers()
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size += len(line)
            if line == b"\r\n":
                break
            if size > MAX_HEADER_BYTES:
                raise ValueError("reply headers too large")
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise ValueError("chunked replies are not supported")
        length = 0 if method == "HEAD" or status in (204, 304) else int(headers.get("content-length", "0"))
        content = await reader.readexactly(length) if length else b""
        keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
        return Response(status, headers, content), keep


# A piece of a streamed body: bytes, or a whole file (path, size).
BodyPart = Union[bytes, tuple[Path, int]]
_HIGH_WATER = 4 * 1024 * 1024
_FILE_CHUNK = 1024 * 1024


class StreamBody:
    """A request body of known length, produced piece by piece (again from the start on a retry)."""

    def __init__(self, length: int, parts: Callable[[], Iterable[BodyPart]]) -> None:
        self.length = length
        self.parts = parts


class BodyFetcher:
    """GETs whose (big) body goes straight from the socket into a file, in a worker thread.

    The event loop's streams copy every byte three or four times on its way (into their buffer, out of it
    in slices) and hold the loop meanwhile; a job printing a gigabyte made that the server's largest cost.
    Here a blocking socket reads into one reusable buffer and the file gets it with one write. Each
    worker thread keeps its own kept-alive connection.
    """

    def __init__(self, base_url: str, headers: dict[str, str], *, socket_path: str | None = None) -> None:
        parts = urlsplit(base_url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._socket_path = socket_path
        host_header = f"[{self._address[0]}]" if ":" in self._address[0] else self._address[0]
        self._headers = {"Host": f"{host_header}:{self._address[1]}", "Connection": "keep-alive", **headers}
        self._local = threading.local()

    def fetch_into(self, target: str, fd: int, timeout: float) -> tuple[int, Headers, bytes, int]:
        """(status, headers, body of an error answer, bytes appended to `fd`); raises TransportError, and
        then leaves the file as it was (a half-received answer never stays in it)."""
        start = os.fstat(fd).st_size
        try:
            return self._fetch(target, fd, timeout)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    def _fetch(self, target: str, fd: int, timeout: float) -> tuple[int, Headers, bytes, int]:
        head = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in self._headers.items())]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        for attempt in (1, 2):
            sock = getattr(self._local, "sock", None)
            reused = sock is not None
            try:
                if sock is None:
                    sock = self._local.sock = self._connect(timeout)
                sock.settimeout(timeout)
                sock.sendall(request)
                return self._answer(sock, fd)
            except _Stale:
                self._drop()
                if reused and attempt == 1:
                    continue
                raise TransportError("the connection was closed before an answer") from None
            except (OSError, ValueError) as e:
                self._drop()
                raise TransportError(str(e) or type(e).__name__) from e
        raise AssertionError("unreachable")

    def _answer(self, sock: socket.socket, fd: int) -> tuple[int, Headers, bytes, int]:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(_FETCH_BUFFER)
        view = memoryview(buffer)
        # The head is peeked at, then taken alone: the body stays in the socket, for splice to move.
        while True:
            peeked = sock.recv(MAX_HEADER_BYTES, socket.MSG_PEEK)
            if not peeked:
                raise _Stale()
            end = peeked.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(peeked) >= MAX_HEADER_BYTES:
                raise ValueError("reply headers too large")
            select.select([sock], [], [], sock.gettimeout())  # a head cut in two: wait for the rest
        filled = sock.recv_into(view, end + 4)
        if filled != end + 4:
            raise ValueError("the reply's head could not be read whole")
        lines = bytes(view[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP reply: {lines[0][:80]!r}")
        status = int(parts[1])
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise ValueError("chunked replies are not supported")
        left = int(headers.get("content-length", "0"))
        body_start = end + 4
        pending = view[body_start:filled]
        kept = bytearray()
        written = 0
        if len(pending) > left:
            raise ValueError("the agent sent more than its Content-Length")
        if status >= 400:
            kept += pending
        elif pending:
            _write_all(fd, pending)
            written += len(pending)
        left -= len(pending)
        if status < 400 and left > 0 and _splice_into(sock, fd, left, sock.gettimeout()):
            return status, headers, b"", written + left
        while left > 0:
            count = sock.recv_into(view[: min(len(view), left)])
            if count == 0:
                raise ValueError("the connection closed in the middle of the reply")
            if status >= 400:
                kept += view[:count]
            else:
                _write_all(fd, view[:count])
                written += count
            left -= count
        if headers.get("connection", "").lower() == "close":
            self._drop()
        return status, headers, bytes(kept), written

    def _connect(self, timeout: float) -> socket.socket:
        if self._socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self._socket_path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection(self._address, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close()
        self._local.sock = None

    def close(self) -> None:
        self._drop()


_splice = {"works": hasattr(os, "splice")}
_pipes = threading.local()


def _splice_into(sock: socket.socket, fd: int, count: int, timeout: float | None) -> bool:
    """Move `count` bytes from the socket to the end of the file in the kernel (Linux: splice through a
    pipe), never through Python; False if this system cannot (then nothing was moved)."""
    if not _splice["works"]:
        return False
    pipe = getattr(_pipes, "pipe", None)
    if pipe is None:
        pipe = _pipes.pipe = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe[1], _F_SETPIPE_SZ, _PIPE_SIZE)
    # splice(2) refuses files opened for appending: write at the end through a second descriptor.
    target = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        position = os.fstat(fd).st_size
        moved = 0
        while moved < count:
            try:
                got = os.splice(sock.fileno(), pipe[1], min(_PIPE_SIZE, count - moved))
            except BlockingIOError:
                # The socket has a timeout, so it is non-blocking underneath: wait for more, up to it.
                if not select.select([sock], [], [], timeout)[0]:
                    raise TimeoutError(f"no data for {timeout} s") from None
                continue
            except OSError as e:
                if moved == 0 and e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    _splice["works"] = False
                    return False
                raise
            if got == 0:
                raise ValueError("the connection closed in the middle of the reply")
            left = got
            while left:
                out = os.splice(pipe[0], target, left, offset_dst=position)
                position += out
                left -= out
            moved += got
        return True
    finally:
        os.close(target)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class _Stale(Exception):
    pass


def _close(connection: _Connection) -> None:
    connection[1].close()
