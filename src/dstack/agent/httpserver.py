"""A small JSON-over-HTTP/1.1 server on the standard library: routing, bearer auth, errors, keep-alive.

Every response carries a Content-Length (or closes the connection), so keep-alive clients never hang, and
no exception ever reaches the client as a traceback or kills the server.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import socketserver
import sys
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, cast
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1024 * 1024
_IDLE_CONNECTION_TIMEOUT_SECONDS = 300
# A refused request body up to this size is read and dropped, which keeps the connection alive.
_DISCARD_LIMIT = 4 * 1024 * 1024
# Bigger ones are answered, then the connection is closed after draining for at most this long: closing
# a socket with unread data resets it, and the client might lose the response.
_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 64 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str  # a regex matched against the whole path; named groups become `Exchange.params`
    handler: Callable[[Exchange], None]
    auth: bool = True


class Exchange:
    """One request and its response, as the route handlers see them."""

    def __init__(self, handler: RequestHandler, path: str, query: str, params: Dict[str, str]) -> None:
        self._handler = handler
        self.method = handler.command
        self.path = path
        self.params = params
        self._query = parse_qs(query, keep_blank_values=True)
        self._body_read = False
        self._body: Optional[_CountedBody] = None  # the body as handed to a route, if it was
        self.status: Optional[int] = None  # set once the response has started

    def header(self, name: str, default: str = "") -> str:
        return str(self._handler.headers.get(name, default))

    def switch_protocols(self, protocol: str) -> socket.socket:
        """Answer 101 for an HTTP Upgrade and hand over the raw connection (HTTP is done with it)."""
        handler = self._handler
        self.status = HTTPStatus.SWITCHING_PROTOCOLS
        handler.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Upgrade", protocol)
        handler.end_headers()
        handler.wfile.flush()
        # After the upgrade the connection is the caller's; the HTTP loop must not read from it again.
        handler.close_connection = True
        sock: socket.socket = handler.connection
        sock.settimeout(None)
        return sock

    def content_length(self) -> Optional[int]:
        if self._handler.headers.get("Transfer-Encoding"):
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Send the body with a Content-Length, not chunked")
        raw = self._handler.headers.get("Content-Length")
        if raw is None:
            return None
        if not raw.strip().isdigit():
            raise ApiError(HTTPStatus.BAD_REQUEST, "The Content-Length header is not a number")
        return int(raw)

    def body_stream(self, max_bytes: int) -> Tuple[IO[bytes], int]:
        """The raw body and its length; the caller must read exactly that many bytes."""
        length = self.content_length()
        if length is None:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "A Content-Length header is required")
        if length > max_bytes:
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"The body is {length} bytes, over the limit of {max_bytes}",
            )
        self._body_read = True
        self._body = _CountedBody(self._handler.rfile, length)
        return cast(IO[bytes], self._body), length

    def read_json(self, max_bytes: int = MAX_JSON_BYTES) -> Any:
        """The JSON body; an empty or missing body reads as an empty object."""
        if not self.content_length():
            return {}
        stream, length = self.body_stream(max_bytes)
        raw = stream.read(length)
        if len(raw) != length:
            raise ApiError(HTTPStatus.BAD_REQUEST, "The request body ended early")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"The request body is not valid JSON ({e})") from e

    def query_number(self, name: str, default: float, integer: bool = False) -> float:
        values = self._query.get(name)
        if not values:
            return default
        try:
            return int(values[-1]) if integer else float(values[-1])
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ApiError(HTTPStatus.BAD_REQUEST, f"Query parameter {name} must be {kind}") from None

    def send_json(self, status: int, data: Any, headers: Optional[Dict[str, str]] = None) -> None:
        body = json.dumps(data).encode()
        self._start(status, "application/json", len(body), headers)
        if self.method != "HEAD":
            self._handler.wfile.write(body)

    def start_stream(self, status: int, content_type: str) -> Callable[[bytes], None]:
        """Start an answer of unknown length (it ends when the connection closes); returns a writer that
        sends each piece at once."""
        handler = self._handler
        handler.close_connection = True
        self._start(status, content_type, None, None)
        handler.wfile.flush()
        sock: socket.socket = handler.connection

        def write(data: bytes) -> None:
            sock.sendall(data)

        return write

    def send_empty(self, status: int, headers: Optional[Dict[str, str]] = None) -> None:
        self._start(status, None, 0, headers)

    def send_file_range(self, path: str, offset: int, count: int, headers: Dict[str, str]) -> None:
        """200 with bytes [offset, offset+count) of the file, sent by the kernel (zero copy)."""
        if count == 0:
            # The file may not even exist yet (no output so far).
            self._start(HTTPStatus.OK, "application/octet-stream", 0, headers)
            return
        with open(path, "rb") as f:
            self._start(HTTPStatus.OK, "application/octet-stream", count, headers)
            if self.method != "HEAD":
                sent = self._handler.connection.sendfile(f, offset, count)
                if sent != count:
                    # The promised Content-Length cannot be honoured: end the connection, never hang it.
                    self._handler.close_connection = True

    def _start(
        self,
        status: int,
        content_type: Optional[str],
        length: Optional[int],
        headers: Optional[Dict[str, str]],
    ) -> None:
        handler = self._handler
        self.status = int(status)
        handler.send_response(status)
        if content_type is not None:
            handler.send_header("Content-Type", content_type)
        # 204 must not have a body, nor a Content-Length; nor has a stream (it ends with the connection).
        if status != HTTPStatus.NO_CONTENT and length is not None:
            handler.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if self._body_unread() and not self._discard_body():
            # Unread request bytes would be parsed as the next request: close instead (lingering, so
            # that the client still gets to read this response).
            handler.close_connection = True
            handler.linger = True
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()

    def _discard_body(self) -> bool:
        """Read and drop a small unread body so the connection stays usable; False if too big to bother."""
        raw = self._handler.headers.get("Content-Length", "").strip()
        if self._handler.headers.get("Transfer-Encoding") or not raw.isdigit():
            return False
        length = int(raw) if self._body is None else self._body.remaining
        if length > _DISCARD_LIMIT:
            return False
        self._body_read = True
        self._body = None
        while length > 0:
            chunk = self._handler.rfile.read(min(length, 64 * 1024))
            if not chunk:
                return False
            length -= len(chunk)
        return True

    def _body_unread(self) -> bool:
        if self._body is not None:
            return self._body.remaining > 0  # a route refused it part-way
        if self._body_read:
            return False
        if self._handler.headers.get("Transfer-Encoding"):
            return True
        raw = self._handler.headers.get("Content-Length", "0").strip()
        return not raw.isdigit() or int(raw) > 0


class _CountedBody:
    """The request body as a route reads it: never past its end, and how much of it is left unread."""

    def __init__(self, source: Any, length: int) -> None:
        self._source = source
        self.remaining = length

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self.remaining:
            size = self.remaining
        data = self._source.read(size) if size else b""
        self.remaining -= len(data)
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self.remaining]
        count = self._source.readinto(view) if len(view) else 0
        self.remaining -= count or 0
        return count or 0


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, host: str, port: int, routes: List[Route], token: str, on_request: Callable[[], None]
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.routes = [(route, re.compile(route.pattern)) for route in routes]
        self.token = token.encode()
        self.on_request = on_request
        super().__init__((host, port), RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS (getfqdn): slow, and not needed.
        socketserver.TCPServer.server_bind(self)
        address = self.server_address
        self.server_name = str(address[0])
        self.server_port = int(address[1])

    def get_request(self) -> Any:
        connection, address = super().get_request()
        # Headers and body go out in separate writes; with Nagle's algorithm on, the body would wait for
        # the client's delayed ACK of the headers: 40 ms added to every answer.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, socket.timeout)):
            # A client that resets or abandons a keep-alive connection is normal, not worth a traceback.
            log.debug("Connection from %s ended: %s", client_address, error)
        else:
            log.exception("Unexpected error while serving %s", client_address)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dstack-agent"
    sys_version = ""  # no need to tell every client which Python runs here
    timeout = _IDLE_CONNECTION_TIMEOUT_SECONDS
    server: AgentHTTPServer
    linger = False

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.server.on_request()
        url = urlsplit(self.path)
        exchange = Exchange(self, url.path, url.query, {})
        try:
            route, params = self._find_route(url.path)
            exchange.params = params
            if route.auth:
                self._check_token()
            route.handler(exchange)
            if self.command in ("POST", "PUT", "DELETE"):
                log.debug("%s %s -> %s", self.command, url.path, exchange.status)
        except ApiError as e:
            self._send_error_response(exchange, e.status, e.message, e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("Unexpected error in %s %s", self.command, url.path)
            self._send_error_response(exchange, 500, "The agent failed to handle the request; see its log")

    def _find_route(self, path: str) -> Tuple[Route, Dict[str, str]]:
        path_known = False
        for route, pattern in self.server.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            path_known = True
            if route.method == self.command:
                return route, match.groupdict()
        if path_known:
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed on {path}")
        raise ApiError(HTTPStatus.NOT_FOUND, f"There is no {path} endpoint")

    def _check_token(self) -> None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.server.token):
            raise ApiError(
                HTTPStatus.UNAUTHORIZED,
                "Missing or wrong agent token; send it as 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )

    def _send_error_response(
        self, exchange: Exchange, status: int, message: str, headers: Optional[Dict[str, str]] = None
    ) -> None:
        if status >= 500 or status == HTTPStatus.UNAUTHORIZED or self.command != "GET":
            log.warning("%s %s -> %d %s", self.command, exchange.path, status, message)
        if exchange.status is not None:
            # Too late for an error response: the client notices the closed connection instead.
            self.close_connection = True
            return
        try:
            exchange.send_json(status, {"error": message}, headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        # Called by the base class for malformed requests: answer JSON like everything else, then close.
        self.close_connection = True
        # An unparsable request line leaves the version at HTTP/0.9, which would suppress the status line.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        body = json.dumps({"error": message or HTTPStatus(code).phrase}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def finish(self) -> None:
        if self.linger:
            self._linger_close()
        super().finish()

    def _linger_close(self) -> None:
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            drained = 0
            while drained < _LINGER_MAX_BYTES and time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.connection.recv(64 * 1024)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
