"""Request dependencies: the server context, the caller (from the bearer token) and their project."""

from __future__ import annotations

from fastapi import Depends, Request

from dstack.server.context import ServerContext
from dstack.server.services.errors import ServiceError
from dstack.server.services.projects import Project
from dstack.server.services.users import User

# The key under which an ASGI layer in front of the API puts the user it has already authenticated.
SESSION_USER = "dstack.user"


class Unauthorized(ServiceError):
    status_code = 401


async def get_ctx(request: Request) -> ServerContext:
    # async: FastAPI runs a plain function dependency in a worker thread, a thread hop per request.
    return request.app.state.ctx


async def get_user(request: Request) -> User:
    # Signed in by the web UI's session (dstack.server.ui.session), on the UI's own port only.
    preset: User | None = request.scope.get(SESSION_USER)
    if preset is not None:
        return preset
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("A token is required: pass it as 'Authorization: Bearer <token>'")
    user = await request.app.state.auth.user_for(token.strip())
    if user is None:
        raise Unauthorized("The token is not valid for this server")
    return user


async def get_project(project: str, request: Request, user: User = Depends(get_user)) -> Project:
    return await request.app.state.projects.resolve(project, user)
