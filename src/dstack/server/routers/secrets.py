"""Project secrets: set, list (names only, never values) and delete; for the project's admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project, get_user
from dstack.server.schemas import SecretValue
from dstack.server.services import secrets as secrets_service
from dstack.server.services.projects import Project
from dstack.server.services.users import User

router = APIRouter(prefix="/api/project/{project}/secrets")


async def _admin(request: Request, project: Project, user: User) -> None:
    await request.app.state.projects.require_admin(project, user, "manage secrets")


@router.get("")
async def list_secrets(
    request: Request,
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
    user: User = Depends(get_user),
) -> list[dict[str, Any]]:
    await _admin(request, project, user)
    return await secrets_service.list_secrets(ctx, project)


@router.put("/{name}")
async def set_secret(
    name: str,
    body: SecretValue,
    request: Request,
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
    user: User = Depends(get_user),
) -> dict[str, Any]:
    await _admin(request, project, user)
    return await secrets_service.set_secret(ctx, project, name, body.value)


@router.delete("/{name}", status_code=204)
async def delete_secret(
    name: str,
    request: Request,
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
    user: User = Depends(get_user),
) -> None:
    await _admin(request, project, user)
    await secrets_service.delete_secret(ctx, project, name)
