"""A run's ports: whether one answers yet, and a WebSocket that carries one TCP connection to it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, WebSocket
from fastapi.responses import JSONResponse

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project
from dstack.server.services import tunnel
from dstack.server.services.errors import ServiceError
from dstack.server.services.projects import Project

router = APIRouter(prefix="/api/project/{project}/runs/{name}/ports")

PortNumber = Path(ge=1, le=65535)


@router.get("/{port}")
async def port_status(
    request: Request,
    name: str,
    port: int = PortNumber,
    wait: float = Query(default=0.0, ge=0.0),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> dict[str, Any]:
    """{"port", "open", "status", "backend"[, "socket"]}: as soon as the port answers, or after `wait` s."""
    local = request.client is not None and request.client.host in ("127.0.0.1", "::1")
    return await tunnel.port_status(ctx, project, name, port, wait=wait, local_client=local)


@router.websocket("/{port}/connect")
async def connect(websocket: WebSocket, project: str, name: str, port: int) -> None:
    """One TCP connection to the running task's port (see dstack.server.services.tunnel)."""
    ctx: ServerContext = websocket.app.state.ctx
    try:
        if not 1 <= port <= 65535:
            raise ServiceError(f"Port {port} is not valid; use 1-65535")
        resolved = await _project(websocket, project)
        stream = await tunnel.open_port(ctx, resolved, name, port)
    except ServiceError as e:
        # Refused before the upgrade: the client reads an ordinary HTTP error with one sentence.
        await websocket.send_denial_response(JSONResponse({"error": e.message}, status_code=e.status_code))
        return
    raw = tunnel.can_relay_raw(websocket)
    try:
        await websocket.accept(subprotocol=tunnel.RAW_PROTOCOL if raw else None)
    except BaseException:
        stream.abort()
        raise
    if raw:
        await tunnel.raw_relay(websocket, stream)
    else:
        await tunnel.relay(websocket, stream)


async def _project(websocket: WebSocket, name: str) -> Project:
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _Unauthorized("A token is required: pass it as 'Authorization: Bearer <token>'")
    user = await websocket.app.state.auth.user_for(token.strip())
    if user is None:
        raise _Unauthorized("The token is not valid for this server")
    project: Project = await websocket.app.state.projects.resolve(name, user)
    return project


class _Unauthorized(ServiceError):
    status_code = 401
