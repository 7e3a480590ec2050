"""A lean, blocking WebSocket client (RFC 6455) for port tunnels: one TCP connection per WebSocket.

Why not the `websockets` client: its frame assembly caps a download at a few hundred MB/s on a small
machine, while this one reads big chunks into one buffer and hands payload slices straight to the local
socket (and masks with the `websockets` C helper). It speaks only what the tunnel needs: binary and text
messages, ping/pong, the closing handshake; no extensions, so no compression.

Liveness: TCP keepalive and TCP_USER_TIMEOUT on the socket, so a link that died without a word (a lost
network, a sleeping laptop) fails reads and writes within about 10 s instead of hanging.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from dstack.agent.tunnel import tune

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BUFFER_SIZE = 1024 * 1024
HEADER_READ = 16 * 1024
SPLICE_MIN = 64 * 1024  # payload left in the socket from this size on is spliced, not copied
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_splice = getattr(os, "splice", None)  # Linux only
MAX_HEAD = 64 * 1024
RAW_PROTOCOL = "dstack-raw"
RAW_READY = b"R"
MAX_TEXT = 64 * 1024
# Keepalive probes after 4 s of silence, every 2 s, 3 of them: a dead link fails within about 10 s.
_USER_TIMEOUT_MS = 10_000  # unacknowledged data for this long ends the connection
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class WebSocketError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HandshakeRefused(WebSocketError):
    """The server answered the upgrade with an HTTP error (its one-sentence reason is the message)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SinkBroken(Exception):
    """Writing to the local side failed (the local client went away)."""


Mask = Callable[[bytes | bytearray | memoryview, bytes], bytes]
_apply_mask: Mask | None = None


def preload() -> Mask:
    """Import the masking helper (importing websockets takes ~60 ms: do it before the first connection)."""
    global _apply_mask
    if _apply_mask is None:
        try:
            from websockets.speedups import apply_mask
        except ImportError:  # a build without the C extension: correct, only slower
            from websockets.utils import apply_mask
        _apply_mask = apply_mask
    return _apply_mask


def connect(base_url: str, path: str, token: str, *, timeout: float = 10.0, raw: bool = False) -> WebSocket:
    """Open a WebSocket to `path` on the server at `base_url` (http or https), authenticated by `token`.

    With `raw`, ask for the `dstack-raw` subprotocol: a server that takes it sends one byte (`R`) after the
    handshake, and from then on the connection carries the stream's bytes as they are, both ways, with TCP's
    own half-close and reset (no WebSocket frames: the relays at both ends move bytes in the kernel). The
    answer's `raw` says which one the server chose."""
    parts = urlsplit(base_url)
    secure = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
    try:
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + (f"Sec-WebSocket-Protocol: {RAW_PROTOCOL}\r\n" if raw and not secure else "")
            + f"Authorization: Bearer {token}\r\nUser-Agent: dstack-cli\r\n\r\n"
        )
        sock.sendall(request.encode())
        status, headers, rest = _read_head(sock)
        if status != 101:
            raise HandshakeRefused(_refusal(sock, status, headers, rest), status)
        expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()  # noqa: S324
        if headers.get("sec-websocket-accept") != expected:
            raise WebSocketError("The server answered the WebSocket handshake wrongly")
        is_raw = headers.get("sec-websocket-protocol", "").strip() == RAW_PROTOCOL
        if is_raw:
            while not rest:
                rest = sock.recv(HEADER_READ)
                if not rest:
                    raise WebSocketError("The server closed the connection right after the handshake")
            if rest[:1] != RAW_READY:
                raise WebSocketError("The server did not start the raw stream it agreed to")
            rest = rest[1:]
        sock.settimeout(None)
        tune(sock, user_timeout_ms=_USER_TIMEOUT_MS)
        ws = WebSocket(sock, rest)
        ws.raw = is_raw
        return ws
    except BaseException:
        sock.close()
        raise


class WebSocket:
    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._close_sent = False
        self._buffer = bytearray(max(BUFFER_SIZE, len(leftover)))
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = len(leftover)
        self._buffer[: len(leftover)] = leftover
        self._gather = type(sock) is socket.socket  # sendmsg avoids a copy; TLS sockets lack it
        self._mask = preload()
        self._pipe: tuple[int, int] | None = None
        self.raw = False  # a raw stream (see connect): no frames, the socket carries the bytes

    def leftover(self) -> bytes:
        """Bytes read past the handshake, not yet handed on (the start of a raw stream)."""
        data = bytes(self._view[self._start : self._end])
        self._start = self._end = 0
        return data

    # -- sending (any thread) ----------------------------------------------------------------------------

    def send_binary(self, payload: bytes | bytearray | memoryview) -> None:
        self._send_frame(OP_BINARY, payload)

    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode())

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        with self._send_lock:
            if self._close_sent:
                return
            self._close_sent = True
        self._send_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode()[:120], closing=True)

    def _send_frame(
        self, opcode: int, payload: bytes | bytearray | memoryview, closing: bool = False
    ) -> None:
        length = len(payload)
        key = os.urandom(4)
        if length < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | length) + key
        elif length < 65536:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length) + key
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length) + key
        masked = self._mask(payload, key) if length else b""
        with self._send_lock:
            if self._close_sent and not closing:
                raise WebSocketError("The WebSocket is closing")
            if self._gather:
                _sendmsg_all(self.sock, header, masked)
            else:
                self.sock.sendall(header + masked)

    # -- receiving (one thread) --------------------------------------------------------------------------

    def pump_to(
        self,
        on_data: Callable[[memoryview], None],
        on_text: Callable[[str], None],
        splice_to: socket.socket | None = None,
    ) -> tuple[int, str]:
        """Read messages until the server closes: binary bytes go to `on_data` as they arrive (a big
        message is not held in memory), text messages to `on_text`. Returns the close code and reason.

        With `splice_to`, the bulk of big binary frames moves from this socket to that one inside the
        kernel (splice(2)) instead of through `on_data`. Raises WebSocketError if the connection breaks
        or the server breaks the protocol, and SinkBroken when writing to `splice_to` (or `on_data`) fails.
        """
        if splice_to is not None and (
            _splice is None or not self._gather or type(splice_to) is not socket.socket
        ):
            splice_to = None
        text_parts: list[bytes] | None = None  # set while a fragmented text message is being read
        while True:
            first, second = self._header_bytes()
            opcode, length = first & 0x0F, second & 0x7F
            if second & 0x80 or first & 0x70:
                raise WebSocketError("The server sent a masked or extended frame")
            if length == 126:
                (length,) = struct.unpack(">H", self._take(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._take(8))
            fin = bool(first & 0x80)
            if opcode == OP_BINARY or (opcode == OP_CONT and text_parts is None):
                self._stream(length, on_data, splice_to)
            elif opcode in (OP_TEXT, OP_CONT):
                text_parts = (text_parts or []) + [self._collect(length, MAX_TEXT)]
                if fin:
                    on_text(b"".join(text_parts).decode("utf-8", "replace"))
                    text_parts = None
            elif opcode == OP_PING:
                payload = self._collect(length, 125)
                try:
                    self._send_frame(OP_PONG, payload)
                except WebSocketError:
                    pass  # we are closing; the server will not wait for this pong
            elif opcode == OP_PONG:
                self._collect(length, 125)
            elif opcode == OP_CLOSE:
                payload = self._collect(length, 125)
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                try:
                    self.send_close(code if code != 1005 else 1000)
                except OSError:
                    pass  # the server may drop the connection right after its close frame
                return code, reason
            else:
                raise WebSocketError(f"The server sent an unknown frame type {opcode}")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _header_bytes(self) -> tuple[int, int]:
        data = self._take(2)
        return data[0], data[1]

    def _take(self, count: int) -> bytes:
        """Exactly `count` bytes (a small header piece), reading more as needed."""
        if self._end - self._start < count:
            leftover = self._end - self._start
            self._buffer[:leftover] = self._buffer[self._start : self._end]
            self._start, self._end = 0, leftover
            while self._end < count:
                # A small read: the payload that follows a big frame's header is better spliced.
                self._fill(HEADER_READ)
        data = bytes(self._view[self._start : self._start + count])
        self._start += count
        return data

    def _collect(self, length: int, limit: int) -> bytes:
        if length > limit:
            raise WebSocketError(f"The server sent a control or text frame of {length} bytes")
        parts: list[bytes] = []
        self._stream(length, lambda view: parts.append(bytes(view)))
        return b"".join(parts)

    def _stream(
        self, length: int, sink: Callable[[memoryview], None], splice_to: socket.socket | None = None
    ) -> None:
        remaining = length
        while remaining:
            if self._start == self._end:
                if splice_to is not None and remaining >= SPLICE_MIN:
                    self._splice(remaining, splice_to)
                    return
                self._start = self._end = 0
                self._fill(len(self._buffer))
            take = min(remaining, self._end - self._start)
            sink(self._view[self._start : self._start + take])
            self._start += take
            remaining -= take

    def _splice(self, count: int, out: socket.socket) -> None:
        """Move exactly `count` payload bytes from the WebSocket to `out` through a pipe, in the kernel."""
        assert _splice is not None
        if self._pipe is None:
            self._pipe = os.pipe()
            try:
                fcntl.fcntl(self._pipe[1], _F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # a smaller pipe only costs more calls
        read_end, write_end = self._pipe
        source, target = self.sock.fileno(), out.fileno()
        while count:
            try:
                moved = _splice(source, write_end, min(count, PIPE_SIZE))
            except OSError as e:
                raise WebSocketError(f"The link to the server broke: {e.strerror or e}") from e
            if not moved:
                raise WebSocketError("The server closed the connection")
            count -= moved
            while moved:
                try:
                    moved -= _splice(read_end, target, moved)
                except OSError as e:
                    raise SinkBroken() from e

    def _fill(self, limit: int) -> None:
        try:
            count = self.sock.recv_into(self._view[self._end : self._end + limit])
        except OSError as e:
            raise WebSocketError(f"The link to the server broke: {e.strerror or e}") from e
        if not count:
            raise WebSocketError("The server closed the connection")
        self._end += count


def _sendmsg_all(sock: socket.socket, header: bytes, payload: bytes) -> None:
    sent = sock.sendmsg([header, payload])
    total = len(header) + len(payload)
    if sent < total:  # a partial write (a full socket buffer): send the rest plainly
        rest = (header + payload)[sent:] if sent < len(header) else memoryview(payload)[sent - len(header) :]
        sock.sendall(rest)


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise WebSocketError("The server closed the connection during the WebSocket handshake")
        data += chunk
        if len(data) > MAX_HEAD:
            raise WebSocketError("The server's answer to the WebSocket handshake is too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise WebSocketError(f"The server answered the WebSocket handshake with {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _refusal(sock: socket.socket, status: int, headers: dict[str, str], body: bytes) -> str:
    """The server's one-sentence reason from its JSON error body."""
    try:
        length = min(int(headers.get("content-length", "0")), MAX_HEAD)
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
        return str(json.loads(body)["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"The server refused the connection (HTTP {status})"
