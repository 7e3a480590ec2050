"""Ports end to end: a real web app as a task, reached from 127.0.0.1 through the real CLI, server and agent.

One run serves the traffic tests through the general path (CLI -> server WebSocket -> task port: with the
local backend the server connects to the port itself; forced with DSTACK_PORTS_VIA_SERVER=1 although the
CLI runs on this machine too); its three ports are mapped the three ways a user can: in the YAML (L:N),
with -p, and as *:N.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from dstack.api.client import Client
from dstack.api.config import load_config
from dstack.cli.ports import wsclient
from tests.e2e.harness import DstackEnv
from tests.e2e.port_app import stream_sha256
from tests.e2e.portkit import Attached, free_port, write_project

pytestmark = pytest.mark.e2e


@dataclass
class Served:
    env: DstackEnv
    run: Attached
    http: str  # the URLs the CLI printed
    ws: str
    tcp: str
    ports: dict[str, int]  # the task's ports
    locals: dict[str, int]  # the local ports asked for


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = DstackEnv(tmp_path_factory.mktemp("ports") / "home")
    env.env["DSTACK_PORTS_VIA_SERVER"] = "1"
    project = env.home / "project"
    project.mkdir()
    ports = {"http": free_port(), "ws": free_port(), "tcp": free_port()}
    locals_ = {"http": free_port(), "ws": free_port()}
    write_project(
        project,
        [f"{locals_['http']}:{ports['http']}", ports["ws"], f"*:{ports['tcp']}"],
        f"--http {ports['http']} --ws {ports['ws']} --tcp {ports['tcp']}",
    )
    run = Attached(env, "run", ".", "-y", "-p", f"{locals_['ws']}:{ports['ws']}", cwd=project)
    try:
        yield Served(
            env,
            run,
            run.url_for(ports["http"]),
            run.url_for(ports["ws"]),
            run.url_for(ports["tcp"]),
            ports,
            locals_,
        )
    finally:
        run.stop()
        env.cleanup()


def _get(url: str, timeout: float = 60) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _port(url: str) -> int:
    return int(urlsplit(url).port or 0)


def test_web_app_answers_through_the_server(served: Served) -> None:
    assert _get(f"{served.http}/hello") == b"hello from the task\n"
    # The YAML mapping L:N and the -p mapping were honoured; *:N took another free port than N.
    assert _port(served.http) == served.locals["http"]
    assert _port(served.ws) == served.locals["ws"]
    assert _port(served.tcp) not in (served.ports["tcp"], 0)
    # The listener is on loopback only.
    assert urlsplit(served.http).hostname == "127.0.0.1"
    # The URL was printed once per port.
    assert sum("is up at" in line for line in served.run.stderr) == 3


def test_twenty_concurrent_requests(served: Served) -> None:
    def fetch(i: int) -> bytes:
        return _get(f"{served.http}/slow?delay=1&id={i}")

    with ThreadPoolExecutor(20) as pool:
        bodies = list(pool.map(fetch, range(20)))
    assert bodies == [f"slow {i}\n".encode() for i in range(20)]


def test_keep_alive_connection_carries_many_requests(served: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", _port(served.http), timeout=30)
    try:
        for _ in range(50):
            conn.request("GET", "/hello")
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == b"hello from the task\n"
    finally:
        conn.close()


def test_200_mb_download_arrives_intact(served: Served) -> None:
    size = 200 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(f"{served.http}/big?size={size}&seed=7", timeout=120) as response:
        while chunk := response.read(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == stream_sha256(7, size)


def test_large_upload_arrives_intact(served: Served) -> None:
    body = hashlib.sha256(b"seed").digest() * (2 * 1024 * 1024)  # 64 MB
    request = urllib.request.Request(f"{served.http}/sha256", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.read().decode() == hashlib.sha256(body).hexdigest()


def test_websocket_echo(served: Served) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{_port(served.ws)}/", compression=None, max_size=None) as ws:
        ws.send("hello")
        assert ws.recv(timeout=30) == "hello"
        blob = bytes(range(256)) * 4096  # 1 MB
        ws.send(blob)
        assert ws.recv(timeout=30) == blob


def test_plain_tcp_half_close(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", _port(served.tcp)), timeout=30) as sock:
        payload = b"x" * 300_000
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # our side ends; the echo must still come back, then the end
        assert _read_until_eof(sock) == payload


def test_app_closing_one_connection_leaves_the_others(served: Served) -> None:
    tcp = ("127.0.0.1", _port(served.tcp))
    with (
        socket.create_connection(tcp, timeout=30) as kept,
        socket.create_connection(tcp, timeout=30) as closed,
    ):
        kept.sendall(b"ping\n")
        assert _read_exactly(kept, 5) == b"ping\n"
        closed.sendall(b"close\n")
        assert _read_until_eof(closed) == b""  # the app closed this one
        kept.sendall(b"still here\n")
        assert _read_exactly(kept, 11) == b"still here\n"
    assert _get(f"{served.http}/hello") == b"hello from the task\n"


def _read_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"connection ended after {data!r}"
        data += chunk
    return data


def test_server_refuses_tunnels_it_should_not_open(served: Served) -> None:
    """Only a member's token, only a declared port of a running run; each refusal is one sentence."""
    entry = load_config(served.env.home / ".dstack" / "config.yml").default()
    assert entry is not None
    name = Client(entry.url, entry.token).list_runs()[0]["name"]
    base = f"/api/project/main/runs/{name}/ports"
    declared, undeclared = served.ports["http"], free_port()
    cases = [
        (f"{base}/{declared}/connect", "wrong-token", 401, "The token is not valid for this server"),
        (f"{base}/{undeclared}/connect", entry.token, 404, f"Run {name} does not declare port {undeclared}"),
        (f"/api/project/main/runs/no-such-run/ports/{declared}/connect", entry.token, 404, "Run no-such-run"),
    ]
    for path, token, status, message in cases:
        with pytest.raises(wsclient.HandshakeRefused) as refused:
            wsclient.connect(entry.url, path, token)
        assert refused.value.status == status
        assert refused.value.message.startswith(message)
    # And with the right token, a declared port speaks HTTP through the raw WebSocket.
    ws = wsclient.connect(entry.url, f"{base}/{declared}/connect", entry.token)
    try:
        ws.send_binary(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ws.send_text("eof")
        received: list[bytes] = []
        code, _ = ws.pump_to(lambda view: received.append(bytes(view)), lambda text: None)
    finally:
        ws.close()
    assert code == 1000
    assert b"".join(received).endswith(b"hello from the task\n")
