"""A small HTTP/1.1 client for the agent's JSON and log calls, with kept-alive connections.

The server makes a few calls to an agent for every job (submit, a log poll or two, delete). Through httpx
each cost ~2.5 ms of the event loop's CPU on a small machine, a third of the server's whole work per job;
this client does the same exchange in a fraction of that. It speaks exactly what the agent speaks:
HTTP/1.1, `Content-Length` bodies (no chunked transfer), keep-alive unless a side says `close`.
Anything else (streamed uploads) stays on httpx.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode, urlsplit

MAX_HEADER_BYTES = 64 * 1024


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
        timeout: float,
    ) -> Response:
        if params:
            path = f"{path}?{urlencode(params)}"
        body = json.dumps(json_body).encode() if json_body is not None else b""
        head = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in self._headers.items())]
        if json_body is not None:
            head.append("Content-Type: application/json")
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            # A kept-alive connection the agent closed while it idled fails at once, before any reply:
            # then the request goes again on a fresh connection (the agent's calls are idempotent).
            for attempt in (1, 2):
                connection, reused = await self._connection(timeout)
                try:
                    response, keep = await asyncio.wait_for(
                        self._exchange(connection, method, message), timeout
                    )
                except asyncio.TimeoutError:
                    _close(connection)
                    raise TransportError(f"no answer within {timeout:g} s") from None
                except _Stale:
                    _close(connection)
                    if reused and attempt == 1:
                        continue
                    raise TransportError("the connection was closed before an answer") from None
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    _close(connection)
                    raise TransportError(str(e) or type(e).__name__) from e
                if keep and not self._closed:
                    self._idle.append(connection)
                else:
                    _close(connection)
                return response
        raise AssertionError("unreachable")

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


class _Stale(Exception):
    pass


def _close(connection: _Connection) -> None:
    connection[1].close()
