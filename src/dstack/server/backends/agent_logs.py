"""The log long-poll to an agent over a bare asyncio HTTP/1.1 connection.

This one request moves a task's whole output (hundreds of MB/s for a chatty task); httpx parses bodies in
pure Python and tops out far below that, so this path reads the agent's Content-Length body with
`readexactly`. The agent always answers with Content-Length, and nothing else goes over these connections.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode, urlsplit

_MAX_HEADER_LINES = 100


class RawResponseError(Exception):
    """The connection broke or the answer was not HTTP we understand."""


class RawHttpPool:
    """Kept-alive connections to one agent, one per concurrent request."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported agent URL {url}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._token = token
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(
        self, path: str, params: dict[str, object], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        target = f"{path}?{urlencode(params)}"
        for attempt in (1, 2):
            fresh = not self._idle
            reader, writer = self._idle.pop() if self._idle else await self._connect(timeout)
            try:
                response = await asyncio.wait_for(self._exchange(reader, writer, target), timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RawResponseError) as e:
                writer.close()
                # A kept-alive connection the agent closed meanwhile is retried once on a fresh one.
                if fresh or attempt == 2:
                    raise RawResponseError(str(e) or type(e).__name__) from e
                continue
            status, headers, body = response
            if headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self._idle.append((reader, writer))
            return status, headers, body
        raise RawResponseError("unreachable")  # the loop always returns or raises

    async def _connect(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, limit=1 << 20), timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise RawResponseError(str(e) or type(e).__name__) from e

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> tuple[int, dict[str, str], bytes]:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Authorization: Bearer {self._token}\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise RawResponseError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise RawResponseError("too many header lines")
        length = headers.get("content-length")
        if length is None:
            raise RawResponseError("the agent sent no Content-Length")
        body = await reader.readexactly(int(length)) if int(length) else b""
        return status, headers, body

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()
