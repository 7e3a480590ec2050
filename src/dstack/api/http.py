"""A lean HTTP/1.1 client for the dstack API: kept-alive connections, Content-Length and chunked bodies,
streamed uploads and downloads.

Why not http.client: on a small machine it costs ~30 ms to import (it pulls in the email package and
ssl), a third of a warm `dstack ps`. This module needs only socket; ssl is imported for https only.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from typing import IO, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

MAX_LINE = 65536
MAX_HEADERS = 100
SEND_CHUNK = 1024 * 1024


@runtime_checkable
class StreamedBody(Protocol):
    """A body that writes itself to the socket (e.g. with sendfile); its `length` is sent first."""

    length: int

    def send_to(self, sock: socket.socket, progress: Callable[[int], None] | None) -> None: ...


class HTTPError(OSError):
    """The peer broke the protocol (or the connection) mid-exchange."""


class StaleConnection(HTTPError):
    """A kept-alive connection the server had closed: the request never reached it, so it may be retried."""


class Response:
    def __init__(self, conn: Connection, status: int, headers: dict[str, str], method: str) -> None:
        self._conn = conn
        self._fp = conn.fp
        self.status = status
        self.headers = headers
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self._left: int | None = int(length) if length is not None and not self._chunked else None
        self._chunk_left = 0
        self._after_chunk = False  # the CRLF closing a chunk is read lazily, so a reader never waits for it
        self._eof = method == "HEAD" or status in (204, 304) or self._left == 0
        self._keep = headers.get("connection", "").lower() != "close" and (
            self._chunked or self._left is not None
        )

    def read(self, size: int = -1) -> bytes:
        """Exactly `size` bytes (fewer only at the end of the body); all of it when size < 0."""
        parts: list[bytes] = []
        got = 0
        while size < 0 or got < size:
            piece = self.read1(SEND_CHUNK if size < 0 else size - got)
            if not piece:
                break
            if not parts and len(piece) == size:
                return piece  # the common case: one piece, no copy
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def read1(self, size: int) -> bytes:
        """Up to `size` bytes, as soon as some are there; b"" at the end of the body."""
        if self._eof or size <= 0:
            return b""
        if self._chunked:
            return self._read_chunked(size)
        want = size if self._left is None else min(size, self._left)
        data = self._fp.read1(want)
        if self._left is not None:
            if not data:
                raise HTTPError("The server closed the connection in the middle of an answer")
            self._left -= len(data)
            self._eof = self._left == 0
        elif not data:
            self._eof = True
        self._maybe_release()
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Up to len(buffer) bytes into buffer, as soon as some are there; 0 at the end of the body. No
        copy of its own: the bytes go from the socket's buffer (or the socket) into `buffer`."""
        if self._eof or not len(buffer):
            return 0
        if self._chunked:
            if self._chunk_left == 0 and not self._next_chunk():
                return 0
            count = self._fp.readinto(buffer[: self._chunk_left])
            if not count:
                raise HTTPError("The server closed the connection in the middle of an answer")
            self._chunk_left -= count
            self._after_chunk = self._chunk_left == 0
            return count
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        count = self._fp.readinto(buffer[:want])
        if self._left is not None:
            if not count:
                raise HTTPError("The server closed the connection in the middle of an answer")
            self._left -= count
            self._eof = self._left == 0
        elif not count:
            self._eof = True
        self._maybe_release()
        return count

    def _next_chunk(self) -> bool:
        """Read the next chunk's size line; False at the last chunk (the body ended)."""
        if self._after_chunk:
            self._fp.readline(MAX_LINE)
            self._after_chunk = False
        line = self._fp.readline(MAX_LINE)
        if not line:
            raise HTTPError("The server closed the connection in the middle of an answer")
        try:
            self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HTTPError(f"Bad chunk size line {line[:40]!r}") from None
        if self._chunk_left == 0:
            while self._fp.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._eof = True
            self._maybe_release()
            return False
        return True

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0 and not self._next_chunk():
            return b""
        data = self._fp.read1(min(size, self._chunk_left))
        if not data:
            raise HTTPError("The server closed the connection in the middle of an answer")
        self._chunk_left -= len(data)
        self._after_chunk = self._chunk_left == 0
        return data

    def _maybe_release(self) -> None:
        if self._eof:
            self._conn.finished(self._keep)

    def close(self) -> None:
        self._conn.close()


class Connection:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.fp: io.BufferedReader
        self._used = False  # a request went over this socket before: it may have gone stale

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | IO[bytes] | StreamedBody | None = None,
        *,
        length: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Response:
        if self.sock is None:
            self._open()
        reused = self._used
        self._used = True
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if isinstance(body, bytes):
            length = len(body)
        elif isinstance(body, StreamedBody):
            length = body.length
        if length is not None:
            head.append(f"Content-Length: {length}")
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        assert self.sock is not None
        try:
            if isinstance(body, bytes):
                self.sock.sendall(data + body)
            elif isinstance(body, StreamedBody):
                self.sock.sendall(data)
                body.send_to(self.sock, progress)
            else:
                self.sock.sendall(data)
                while body is not None and (chunk := body.read(SEND_CHUNK)):
                    self.sock.sendall(chunk)
                    if progress is not None:
                        progress(len(chunk))
            status_line = self.fp.readline(MAX_LINE)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.close()
            if reused:
                raise StaleConnection(str(e)) from e
            raise
        if not status_line:
            self.close()
            if reused:
                raise StaleConnection("The server closed the kept-alive connection")
            raise HTTPError("The server closed the connection without answering")
        return Response(self, _status(status_line), self._headers(), method)

    def finished(self, keep: bool) -> None:
        """The answer was read to its end; the socket serves the next request unless it must close."""
        if not keep:
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.fp.close()
                self.sock.close()
            finally:
                self.sock = None
                self._used = False

    def _open(self) -> None:
        # An ASCII name as bytes: a str goes through the idna codec, whose import costs ~1 ms of each command.
        host = self.host.encode() if self.host.isascii() else self.host
        sock = socket.create_connection((host, self.port), timeout=self.timeout)  # type: ignore[arg-type]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
        self.fp = cast(io.BufferedReader, sock.makefile("rb", buffering=65536))

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self.fp.readline(MAX_LINE)
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise HTTPError("The server closed the connection in the middle of an answer")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raise HTTPError("The server sent too many header lines")


def _status(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HTTPError(f"Not an HTTP answer: {line[:60]!r}")
    return int(parts[1])
