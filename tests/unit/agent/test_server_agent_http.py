"""The server's lean HTTP client for agent calls, against a real agent and a real socket server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from agent_testkit import TOKEN, AgentProcess

from dstack.server.backends import agent_events
from dstack.server.backends.agent_client import AgentClient, AgentError, AgentUnreachable
from dstack.server.backends.agent_http import AgentHTTP, TransportError


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_job_through_the_lean_calls(shared_agent: AgentProcess) -> None:
    async def scenario() -> None:
        client = AgentClient(f"http://127.0.0.1:{shared_agent.port}", TOKEN)
        try:
            assert (await client.health())["service"] == "dstack-agent"
            await client.submit_job({"id": "lean-1", "run_name": "lean", "commands": ["echo hello"]})
            # Submitting the same job again is answered, not refused: the supervisor relies on it.
            await client.submit_job({"id": "lean-1", "run_name": "lean", "commands": ["echo hello"]})
            data = b""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                chunk = await client.logs("lean-1", offset=len(data), wait=2)
                data += chunk.data
                if chunk.finished:
                    break
            assert data == b"hello\n" and chunk.status == "done" and chunk.exit_code == 0
            with pytest.raises(AgentError) as caught:
                await client.get_job("no-such-job")
            assert caught.value.status == 404 and "not found" in str(caught.value)
            assert not await client.has_code("0" * 64)  # HEAD: a 404 is an answer
            await client.delete_job("lean-1")
        finally:
            await client.close()

    run(scenario())


def test_a_wrong_token_is_an_error_not_a_crash(shared_agent: AgentProcess) -> None:
    async def scenario() -> None:
        client = AgentClient(f"http://127.0.0.1:{shared_agent.port}", "wrong")
        try:
            with pytest.raises(AgentError) as caught:
                await client.list_jobs()
            assert caught.value.status == 401
        finally:
            await client.close()

    run(scenario())


async def _one_reply_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request, then hangs up without saying so, as a server that idled a connection out."""
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    writer.close()


def test_a_connection_closed_while_idle_is_replaced() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_one_reply_per_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AgentHTTP(f"http://127.0.0.1:{port}", {})
        try:
            for _ in range(3):
                response = await client.request("GET", "/api/health", timeout=5)
                assert response.status_code == 200 and response.json() == {}
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_nothing_listening_and_no_answer_are_transport_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server_quiet = AgentHTTP(f"http://127.0.0.1:{port}", {})
        with pytest.raises(TransportError, match=r"no answer within 0\.3 s"):
            await server_quiet.request("GET", "/", timeout=0.3)
        await server_quiet.aclose()
        server.close()
        await server.wait_closed()
        # The port is closed now: the server's client says the agent is unreachable.
        client = AgentClient(f"http://127.0.0.1:{port}", TOKEN, timeout=2)
        with pytest.raises(AgentUnreachable):
            await client.health()
        await client.close()

    run(scenario())


def test_the_event_stream_of_a_frozen_agent_is_cut_and_opened_again_once_it_thaws(
    start_agent: Callable[..., AgentProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Staleness at 1 s, under the agent's 5 s heartbeat: a job printing every 0.1 s keeps the stream fed.
    monkeypatch.setattr(agent_events, "STALE_AFTER", 1.0)
    monkeypatch.setattr(agent_events, "RECONNECT_AFTER", 0.1)
    agent = start_agent()
    job = agent.client().submit(["while true; do echo tick; sleep 0.1; done"])["id"]

    async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        events = agent_events.AgentEvents(
            f"http://127.0.0.1:{agent.port}", {"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            events.view(job)  # starts the stream
            await until(lambda: events.healthy)
            view = events.view(job)
            assert view is not None
            await until(lambda: view.size > 0)
            await asyncio.sleep(2.5)  # twice the staleness limit: fed all along, so it stays up
            assert events.healthy and events.view(job) is view
            os.kill(agent.process.pid, signal.SIGSTOP)
            try:
                await until(lambda: not events.healthy, timeout=10)  # cut: its waiters poll on their own
                assert view.changed.is_set()
            finally:
                os.kill(agent.process.pid, signal.SIGCONT)
            await until(lambda: events.healthy)  # opened again once the agent answers
            again = events.view(job)
            assert again is not None
            await until(lambda: again.size > view.size)  # and the job's output is told again
        finally:
            await events.close()

    run(scenario())
