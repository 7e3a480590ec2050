"""Task ports through the server: wait until one answers, and relay a client's WebSocket to it.

The path of a forwarded connection is CLI listener -> WebSocket (this server) -> the host's agent (an HTTP
Upgrade to raw TCP, see dstack.agent.tunnel) -> 127.0.0.1:PORT on the host. One WebSocket carries one TCP
connection, so when the app closes a connection only that connection closes.

On the WebSocket, binary messages carry the stream's bytes and the text message "eof" says that the
sender's side of the stream ended (a TCP half-close). The server closes the WebSocket with 1000 once both
sides ended, and with 1011 and a one-sentence reason when the task's side broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from dstack.core.statuses import RunStatus
from dstack.server.backends.agent_client import AgentError, AgentUnreachable
from dstack.server.backends.agent_tunnel import TunnelStream
from dstack.server.backends.registry import UnknownHost
from dstack.server.context import ServerContext
from dstack.server.db.models import JobRow, RunRow
from dstack.server.events import run_channel
from dstack.server.schemas import RunSpec
from dstack.server.services import runs as runs_service
from dstack.server.services.errors import BadGateway, Conflict, NotFound, Unavailable
from dstack.server.services.projects import Project

log = logging.getLogger(__name__)

EOF_MESSAGE = "eof"
MAX_WAIT = 60.0
CLOSE_BROKEN = 1011  # the task's side failed (reset, agent gone)
CLOSE_CLIENT_BROKEN = 4000  # sent by the CLI when its local connection broke


async def port_status(
    ctx: ServerContext, project: Project, name: str, port: int, *, wait: float
) -> dict[str, Any]:
    """Whether the run's port answers; with `wait`, returns as soon as it does (or the run ends)."""
    wait = min(max(wait, 0.0), MAX_WAIT)
    deadline = time.monotonic() + wait
    run, job = await _run_with_port(ctx, project, name, port)
    signal = ctx.notifier.signal(run_channel(run.id))
    while True:
        version = signal.version
        run, job = await runs_service.get(ctx, project, name)
        status = RunStatus(run.status)
        remaining = max(0.0, deadline - time.monotonic())
        if status is RunStatus.RUNNING and job is not None and job.host_id is not None:
            answer = await _agent_port_status(ctx, job, port, remaining)
            return _status_json(run, port, bool(answer["open"]))
        if status.is_finished or status is RunStatus.TERMINATING or remaining <= 0:
            return _status_json(run, port, False)
        # Not running yet (waiting for capacity, preparing its environment): wake on its next change.
        await signal.wait(version, remaining)


async def open_port(ctx: ServerContext, project: Project, name: str, port: int) -> TunnelStream:
    """A TCP stream to the running task's port, through its host's agent. ServiceError says why not."""
    run, job = await _run_with_port(ctx, project, name, port)
    if run.status != RunStatus.RUNNING.value or job is None or job.host_id is None:
        raise Conflict(f"Run {name} is {run.status}; its ports can be reached while it is running")
    try:
        return await ctx.backends.job_agent(job.host_id, job.id).open_tunnel(job.id, port)
    except (AgentUnreachable, UnknownHost) as e:
        raise Unavailable(f"The host of run {name} does not answer: {e}") from e
    except AgentError as e:
        if e.status == 502:
            raise BadGateway(str(e)) from e
        raise Conflict(f"The host of run {name} refused the connection: {e}") from e


async def relay(websocket: WebSocket, stream: TunnelStream) -> None:
    """Carry the stream both ways until both sides end, or one breaks; then close both."""
    upstream = asyncio.create_task(_client_to_task(websocket, stream))
    downstream = asyncio.create_task(_task_to_client(websocket, stream))
    code, reason = 1000, ""
    try:
        pending: set[asyncio.Task[bool]] = {upstream, downstream}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    code, reason = CLOSE_BROKEN, _broken_reason(task.exception())
                    pending = set()
                elif not task.result():
                    code, reason = CLOSE_CLIENT_BROKEN, ""  # the client went away: nothing to tell it
                    pending = set()
    finally:
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)
        if code == 1000:
            stream.close()
        else:
            stream.abort()  # a reset, so the app sees the stream broke instead of a clean end
        if code != CLOSE_CLIENT_BROKEN:
            with contextlib.suppress(Exception):
                await websocket.close(code, reason)


async def _client_to_task(websocket: WebSocket, stream: TunnelStream) -> bool:
    """True when the client ended its side cleanly ("eof"); False when its WebSocket went away."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return False
        data = message.get("bytes")
        if data is not None:
            await stream.write(data)
        elif message.get("text") == EOF_MESSAGE:
            stream.write_eof()
            return True


async def _task_to_client(websocket: WebSocket, stream: TunnelStream) -> bool:
    try:
        while data := await stream.read():
            await websocket.send_bytes(data)
        await websocket.send_text(EOF_MESSAGE)
    except (WebSocketDisconnect, RuntimeError) as e:
        # Sending on a WebSocket the client already closed.
        log.debug("tunnel client gone while sending: %s", e)
        return False
    return True


def _broken_reason(error: BaseException | None) -> str:
    if isinstance(error, ConnectionResetError):
        return "The task's app reset the connection"
    return f"The connection to the task broke: {error or 'unknown error'}"[:120]


async def _run_with_port(
    ctx: ServerContext, project: Project, name: str, port: int
) -> tuple[RunRow, JobRow | None]:
    run, job = await runs_service.get(ctx, project, name)
    declared = [p.container_port for p in RunSpec.model_validate_json(run.spec).ports]
    if port not in declared:
        listed = ", ".join(str(p) for p in declared) or "none"
        raise NotFound(f"Run {name} does not declare port {port} (its ports: {listed})")
    return run, job


async def _agent_port_status(ctx: ServerContext, job: JobRow, port: int, wait: float) -> dict[str, Any]:
    assert job.host_id is not None
    try:
        return await ctx.backends.job_agent(job.host_id, job.id).port_status(job.id, port, wait=wait)
    except (AgentUnreachable, UnknownHost) as e:
        raise Unavailable(f"The task's host does not answer: {e}") from e
    except AgentError as e:
        if e.status == 404:  # the job ended and was cleaned up between our read and the agent's
            return {"open": False}
        raise


def _status_json(run: RunRow, port: int, is_open: bool) -> dict[str, Any]:
    return {"port": port, "open": is_open, "status": run.status, "backend": run.backend}
