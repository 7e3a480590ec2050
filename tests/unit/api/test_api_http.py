"""The CLI's lean HTTP client against a real socket server speaking raw HTTP/1.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from dstack.api.http import Connection, HTTPError, StaleConnection


@contextmanager
def raw_server(answer: Callable[[socket.socket, int], bool]) -> Iterator[str]:
    """Accepts connections; for each request calls answer(conn, n) (n counts requests on the connection);
    it returns False to close the connection afterwards."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            count = 0
            while True:
                line = reader.readline()
                if not line:
                    return
                length = 0
                while (header := reader.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                reader.read(length)
                count += 1
                if not answer(conn, count):
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()


def test_content_length_and_keep_alive() -> None:
    def answer(conn: socket.socket, n: int) -> bool:
        body = f"answer {n}".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    with raw_server(answer) as url:
        conn = Connection(url, 5)
        assert conn.request("GET", "/", {}).read() == b"answer 1"
        assert conn.request("POST", "/", {}, b"payload").read() == b"answer 2"  # same socket, kept alive
        conn.close()


def test_chunked_body_with_trailers_read_exactly_and_in_pieces() -> None:
    def answer(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(b"5\r\nhello\r\n")
        conn.sendall(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        return True

    with raw_server(answer) as url:
        conn = Connection(url, 5)
        response = conn.request("GET", "/", {})
        assert response.read(3) == b"hel"
        assert response.read(5) == b"lo wo"  # spans two chunks
        assert response.read() == b"rld"
        assert response.read1(10) == b""
        # The body was read to its end, so the connection serves the next request.
        assert conn.request("GET", "/", {}).read() == b"hello world"


def test_a_server_that_closed_a_kept_alive_connection_is_reported_as_stale() -> None:
    def answer(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # close after every answer, as an idle-timeout would

    with raw_server(answer) as url:
        conn = Connection(url, 5)
        assert conn.request("GET", "/", {}).read() == b"ok"
        with pytest.raises(StaleConnection):
            conn.request("GET", "/", {}).read()
        assert conn.request("GET", "/", {}).read() == b"ok"  # a fresh socket works


def test_truncated_answers_and_garbage_are_errors() -> None:
    def truncated(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        return False

    with raw_server(truncated) as url, pytest.raises(HTTPError):
        Connection(url, 5).request("GET", "/", {}).read()

    def garbage(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        return False

    with raw_server(garbage) as url, pytest.raises(HTTPError):
        Connection(url, 5).request("GET", "/", {})


def test_a_silent_server_times_out() -> None:
    # The server reads the request and never answers.
    with raw_server(lambda conn, n: True) as url, pytest.raises(TimeoutError):
        Connection(url, 0.3).request("GET", "/", {})
