"""Task ports through a real agent: waiting for a port, the raw TCP relay after the upgrade, refusals."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from agent_testkit import PYTHON39, TOKEN, AgentClient, AgentProcess, file_member, new_job_id

StartAgent = Callable[..., AgentProcess]

# Echoes each connection's bytes, and half-closes back once the client half-closed.
ECHO = b"""
import socket, sys, threading
def serve(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_echo(client: AgentClient, port: int, delay: float = 0.0) -> str:
    code_hash = client.upload([file_member("echo.py", ECHO)])
    job = client.submit([f"sleep {delay}", f"python3 echo.py {port}"], code_hash=code_hash, ports=[port])
    return str(job["id"])


def _upgrade(agent: AgentProcess, path: str, token: str | None = TOKEN) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", agent.port), timeout=30)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    upgrade = "Connection: Upgrade\r\nUpgrade: dstack-tcp\r\n"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\n{auth}{upgrade}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    return sock, head


def _echo_through(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_port_status_waits_for_the_app_then_the_relay_carries_bytes(shared_agent: AgentProcess) -> None:
    client = shared_agent.client()
    port = _free_port()
    job_id = _start_echo(client, port, delay=1.0)
    status = client.get_json(f"/api/jobs/{job_id}/ports/{port}?wait=30")
    assert status == {"port": port, "open": True, "status": "running"}
    sock, head = _upgrade(shared_agent, f"/api/jobs/{job_id}/ports/{port}/connect")
    assert head.startswith(b"HTTP/1.1 101 ")
    payload = bytes(range(256)) * 8192  # 2 MB, half-closed after sending
    assert _echo_through(sock, payload) == payload
    sock.close()
    client.stop(job_id, abort=True)
    client.wait_final(job_id)
    # A finished job's port is closed, and a tunnel to it is refused.
    assert client.get_json(f"/api/jobs/{job_id}/ports/{port}?wait=5")["open"] is False
    response = client.request("GET", f"/api/jobs/{job_id}/ports/{port}/connect")
    assert response.status == 409
    client.close()


def test_tunnel_refusals_are_json_sentences(shared_agent: AgentProcess) -> None:
    client = shared_agent.client()
    port, other = _free_port(), _free_port()
    job = client.submit(["sleep 1000"], ports=[port], id=new_job_id())
    client.wait_status(job["id"], ["running"])
    base = f"/api/jobs/{job['id']}/ports"
    undeclared = client.request("GET", f"{base}/{other}/connect")
    assert undeclared.status == 404
    assert undeclared.json()["error"] == f"Job {job['id']} does not declare port {other} (its ports: {port})"
    assert client.request("GET", f"{base}/{port}/connect").status == 426  # no Upgrade header
    _, head = _upgrade(shared_agent, f"{base}/{port}/connect", token="wrong")
    assert head.startswith(b"HTTP/1.1 401 ")
    sock, head = _upgrade(shared_agent, f"{base}/{port}/connect")
    assert head.startswith(b"HTTP/1.1 502 ")  # nothing listens there (yet)
    sock.close()
    assert client.get_json(f"{base}/{port}?wait=0.2") == {"port": port, "open": False, "status": "running"}
    client.stop(job["id"], abort=True)
    client.wait_final(job["id"])
    client.close()


@pytest.mark.skipif(not PYTHON39.exists(), reason="Python 3.9 is not installed here")
def test_relay_on_python_3_9(start_agent: StartAgent) -> None:
    """Python 3.9 has no os.splice: the relay copies instead."""
    agent = start_agent(python=str(PYTHON39))
    client = agent.client()
    port = _free_port()
    job_id = _start_echo(client, port)
    assert client.get_json(f"/api/jobs/{job_id}/ports/{port}?wait=30")["open"] is True
    sock, head = _upgrade(agent, f"/api/jobs/{job_id}/ports/{port}/connect")
    assert head.startswith(b"HTTP/1.1 101 ")
    payload = b"3.9 " * 100_000
    assert _echo_through(sock, payload) == payload
    sock.close()
    client.stop(job_id, abort=True)
    client.wait_final(job_id)
    client.close()
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log()
