"""The server's side of an agent's event stream, against a stream served on loopback the way the agent
serves it (dstack.agent.events): batches are applied as they arrive, and a silent stream is cut."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from dstack.server.backends import agent_events
from dstack.server.backends.agent_events import AgentEvents

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-dstack-events\r\n\r\n"


def _batch(job_id: str, status: str, size: int = 0) -> bytes:
    entry = {"id": job_id, "status": status, "message": None, "exit_code": None, "size": size}
    return json.dumps({"jobs": [entry]}).encode() + b"\n"


class FakeAgent:
    """Serves GET /api/events: `script(writer)` writes what the agent would."""

    def __init__(self, script) -> None:  # type: ignore[no-untyped-def]
        self._script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        try:
            await self._script(writer)
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


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


def test_a_stream_that_goes_silent_is_cut_and_opened_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_events, "STALE_AFTER", 0.3)
    monkeypatch.setattr(agent_events, "RECONNECT_AFTER", 0.05)

    async def scenario() -> None:
        async def script(writer: asyncio.StreamWriter) -> None:
            writer.write(HEAD + _batch("job", "running"))
            await asyncio.sleep(30)  # then nothing, not even the heartbeat

        agent = FakeAgent(script)
        events = AgentEvents(await agent.start(), {})
        try:
            events.view("job")
            await _until(lambda: events.healthy)
            view = events.view("job")
            assert view is not None and view.status == "running"
            changed = view.changed
            await _until(lambda: not events.healthy)  # cut: its waiters fall back to their own polls
            assert changed.is_set()
            await _until(lambda: agent.connections >= 2 and events.healthy)  # and opened again
        finally:
            await events.close()
            await agent.close()

    asyncio.run(scenario())


def test_a_stream_fed_in_time_stays_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_events, "STALE_AFTER", 0.3)

    async def scenario() -> None:
        async def script(writer: asyncio.StreamWriter) -> None:
            writer.write(HEAD)
            for _ in range(12):  # a batch every 0.1 s for 1.2 s: four times the staleness limit
                writer.write(b'{"jobs":[]}\n')
                await writer.drain()
                await asyncio.sleep(0.1)
            await asyncio.sleep(30)

        agent = FakeAgent(script)
        events = AgentEvents(await agent.start(), {})
        try:
            events.view("job")
            await _until(lambda: events.healthy)
            await asyncio.sleep(1.0)
            assert events.healthy and agent.connections == 1
        finally:
            await events.close()
            await agent.close()

    asyncio.run(scenario())
