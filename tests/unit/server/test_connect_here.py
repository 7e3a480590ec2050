"""The server's own connection to a task port of this machine (backends/agent_tunnel.connect_here): what the
general port path uses with the local backend instead of the agent's relay."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dstack.server.backends.agent_tunnel import connect_here


def _listener(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((host, 0))
    server.listen()
    return server


async def _read_all(stream) -> bytes:  # type: ignore[no-untyped-def]
    received = b""
    while chunk := await asyncio.wait_for(stream.read(), 10):
        received += chunk
    return received


def test_bytes_and_half_closes_pass_both_ways() -> None:
    server = _listener()

    async def scenario() -> None:
        stream = await connect_here(server.getsockname()[1])
        app, _ = await asyncio.to_thread(server.accept)
        with app:
            await stream.write(b"request")
            stream.write_eof()  # the client's half-close reaches the app as an end of stream
            assert await asyncio.to_thread(app.recv, 100) == b"request"
            assert await asyncio.to_thread(app.recv, 100) == b""
            app.sendall(b"x" * 3_000_000)  # more than socket buffers hold, after the client's end
            app.shutdown(socket.SHUT_WR)
            assert await _read_all(stream) == b"x" * 3_000_000
        stream.close()

    try:
        asyncio.run(scenario())
    finally:
        server.close()


def test_a_port_nothing_listens_on_is_an_os_error() -> None:
    server = _listener()
    port = server.getsockname()[1]
    server.close()
    with pytest.raises(OSError):
        asyncio.run(connect_here(port))


def test_an_app_listening_on_ipv6_loopback_only_is_reached() -> None:
    try:
        server = _listener(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def scenario() -> bytes:
        stream = await connect_here(server.getsockname()[1])
        app, _ = await asyncio.to_thread(server.accept)
        with app:
            app.sendall(b"over ::1")
            app.shutdown(socket.SHUT_WR)
            received = await _read_all(stream)
        stream.close()
        return received

    try:
        assert asyncio.run(scenario()) == b"over ::1"
    finally:
        server.close()
