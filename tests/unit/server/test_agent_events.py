"""The server's side of an agent's event stream: a backlog of batches (written with the agent's own
encoder, dstack.agent.events) is applied without a loop iteration per batch. The stream against a real
agent, frozen and thawed, is in tests/unit/agent/test_server_agent_http.py."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from dstack.agent.events import EventRoutes
from dstack.server.backends.agent_events import AgentEvents

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-dstack-events\r\n\r\n"


def _batch(job_id: str, status: str, size: int = 0) -> bytes:
    entry = {"id": job_id, "status": status, "message": None, "exit_code": None, "size": size}
    return EventRoutes._encode([entry], [])


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_backlog_of_batches_is_applied_without_a_loop_iteration_per_batch() -> None:
    # Under load the agent's batches pile up in the socket while the loop is busy; reading them one loop
    # iteration each (as a wait_for per batch did) left a server seconds behind its agent.
    count = 1000
    go, sent = threading.Event(), threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def agent() -> None:  # a thread: it keeps sending while the test holds up the event loop
        connection, _ = listener.accept()
        with connection:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            connection.recv(65536)
            connection.sendall(HEAD + _batch("warm", "running"))
            go.wait(10)
            connection.sendall(b"".join(_batch(f"j{i}", "done", size=i) for i in range(count)))
            sent.set()
            go.wait(10)
            time.sleep(5)

    async def scenario() -> None:
        port = listener.getsockname()[1]
        events = AgentEvents(f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"})
        try:
            assert events.view("warm") is None  # down until the stream is up; this starts it
            await _until(lambda: events.healthy)
            last = events.view(f"j{count - 1}")
            assert last is not None
            applied = last.changed  # set once its batch, the last one, is applied
            go.set()
            assert sent.wait(10)  # the loop is held up meanwhile, as a busy server's is
            time.sleep(0.1)  # noqa: ASYNC251 - holding up the loop is the point
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            counting = asyncio.create_task(ticker())
            await asyncio.wait_for(applied.wait(), 10)
            counting.cancel()
            for i in range(count):
                view = events.view(f"j{i}")
                assert view is not None and (view.status, view.size) == ("done", i)
            assert ticks < count // 4, f"{ticks} loop iterations for {count} batches"
        finally:
            await events.close()

    thread = threading.Thread(target=agent, daemon=True)
    thread.start()
    try:
        asyncio.run(scenario())
    finally:
        go.set()
        listener.close()
