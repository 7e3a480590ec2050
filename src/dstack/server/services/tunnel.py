"""Task ports through the server: wait until one answers, and relay a client's WebSocket to it.

The path of a forwarded connection is CLI listener -> WebSocket (this server) -> the host's agent (an HTTP
Upgrade to raw TCP, see dstack.agent.tunnel) -> 127.0.0.1:PORT on the host; where the host is this machine
(the local backend: Backend.ports_here), the server connects to 127.0.0.1:PORT itself, one relay fewer.
One WebSocket carries one TCP connection, so when the app closes a connection only that connection closes.

On the WebSocket, binary messages carry the stream's bytes and the text message "eof" says that the
sender's side of the stream ended (a TCP half-close). The server closes the WebSocket with 1000 once both
sides ended, and with 1011 and a one-sentence reason when the task's side broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

# The one relay of the project, shared by the agent, the CLI and this server: stdlib only, and it moves
# the bytes in the kernel (splice). A function of the agent's package, used here as a library: the server
# still reaches agents only through their API.
from dstack.agent.tunnel import port_refused
from dstack.agent.tunnel import relay as agent_relay
from dstack.core.statuses import RunStatus
from dstack.server.backends.agent_client import AgentError, AgentUnreachable
from dstack.server.backends.agent_tunnel import TunnelStream, connect_here
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
    ctx: ServerContext, project: Project, name: str, port: int, *, wait: float, local_client: bool = False
) -> dict[str, Any]:
    """Whether the run's port answers; with `wait`, returns as soon as it does (or the run ends).

    To a client on this machine, an open port's answer may name a unix socket that reaches it directly
    (see Backend.port_socket): only this machine's user who runs the server can connect to it."""
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
            found = _status_json(run, port, bool(answer["open"]))
            if found["open"] and local_client:
                with contextlib.suppress(UnknownHost):
                    found["socket"] = await ctx.backends.port_socket(job.host_id, job.id, port)
            return found
        if status.is_finished or status is RunStatus.TERMINATING or remaining <= 0:
            return _status_json(run, port, False)
        # Not running yet (waiting for capacity, preparing its environment): wake on its next change.
        await signal.wait(version, remaining)


async def open_port(ctx: ServerContext, project: Project, name: str, port: int) -> TunnelStream:
    """A TCP stream to the running task's port: through its host's agent, or straight to it where the host is
    this machine. ServiceError says why not."""
    run, job = await _run_with_port(ctx, project, name, port)
    if run.status != RunStatus.RUNNING.value or job is None or job.host_id is None:
        raise Conflict(f"Run {name} is {run.status}; its ports can be reached while it is running")
    try:
        if ctx.backends.ports_here(job.host_id):
            try:
                return await connect_here(port)
            except OSError as e:
                raise BadGateway(port_refused(port, e)) from e
        return await ctx.backends.job_agent(job.host_id, job.id).open_tunnel(job.id, port)
    except (AgentUnreachable, UnknownHost) as e:
        raise Unavailable(f"The host of run {name} does not answer: {e}") from e
    except AgentError as e:
        if e.status == 502:
            raise BadGateway(str(e)) from e
        raise Conflict(f"The host of run {name} refused the connection: {e}") from e


RAW_PROTOCOL = "dstack-raw"
RAW_READY = b"R"
_PROTOCOL_KEY = "dstack.websocket_protocol"


def expose_websocket_protocol(app: Any) -> Any:
    """The ASGI app, with each WebSocket's connection (uvicorn's protocol object) put in its scope.

    A tunnel in raw mode takes the connection over from the WebSocket machinery once the handshake is done
    (see `raw_relay`); this is the one place that knows how uvicorn hands it over: the `send` callable is
    a method of the protocol, which holds the transport.
    """

    async def with_protocol(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "websocket":
            protocol = getattr(send, "__self__", None)
            if getattr(protocol, "transport", None) is not None:
                scope[_PROTOCOL_KEY] = protocol
        await app(scope, receive, send)

    return with_protocol


def can_relay_raw(websocket: WebSocket) -> bool:
    """The client asked for raw bytes after the handshake, and this connection can be taken over."""
    protocol = websocket.scope.get(_PROTOCOL_KEY)
    if protocol is None or RAW_PROTOCOL not in websocket.scope.get("subprotocols", []):
        return False
    transport = protocol.transport
    return transport.get_extra_info("sslcontext") is None and transport.get_extra_info("socket") is not None


async def raw_relay(websocket: WebSocket, stream: TunnelStream) -> None:
    """After the handshake (accepted with RAW_PROTOCOL), carry the bytes between the client's connection
    and the task's side (the agent's, or the port's itself) as they are: both are taken from the event loop
    and relayed in the kernel (splice), with half-closes and resets passed on, by the same relay the agent
    and the CLI use.

    Taking over: the WebSocket machinery stops reading and its pings stop, the answer to the handshake has
    left, then the client gets RAW_READY (it sends nothing before that). Output the task's side had sent
    already goes first."""
    protocol = websocket.scope[_PROTOCOL_KEY]
    client_transport, task_transport = protocol.transport, stream.transport
    assert task_transport is not None
    client_transport.pause_reading()
    # accept() only lets the WebSocket machinery answer the handshake, in a task of its own: wait until
    # the answer is written (the connection is open) and has left, before any byte of the stream.
    for _ in range(5000):
        if getattr(protocol, "open", True) and client_transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    else:
        raise ConnectionError("the WebSocket handshake did not complete")
    ping = getattr(protocol, "keepalive_ping_task", None)
    if ping is not None:
        ping.cancel()
    client = _take_socket(client_transport)
    task = _take_socket(task_transport)
    early = stream.take_buffered()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            client.sendall(RAW_READY + early)
            agent_relay(client, task)
        except OSError:
            for sock in (client, task):
                sock.close()
        finally:
            loop.call_soon_threadsafe(_settle, done)

    threading.Thread(target=run, name="port-relay", daemon=True).start()
    try:
        await asyncio.shield(done)
    finally:
        # The relay ended both directions (a reset included); this only lets go of the descriptors.
        client_transport.close()
        task_transport.close()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _take_socket(transport: Any) -> socket.socket:
    """A blocking socket of our own on the transport's connection (the loop no longer uses it)."""
    sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
    sock.setblocking(True)
    return sock


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
