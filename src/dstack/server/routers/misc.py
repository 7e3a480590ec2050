"""Health (the one endpoint without a token), the caller, and projects."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from dstack import __version__
from dstack.server.routers.deps import get_project, get_user
from dstack.server.services.projects import Project, projects_of
from dstack.server.services.users import User

router = APIRouter()


@router.get("/api/health")
async def health() -> dict[str, Any]:
    return {"service": "dstack-server", "version": __version__}


@router.get("/api/users/me")
async def me(user: User = Depends(get_user)) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "is_admin": user.is_admin}


@router.get("/api/projects")
async def list_projects(request: Request, user: User = Depends(get_user)) -> list[dict[str, Any]]:
    """The projects the caller belongs to (an admin: all)."""
    return [{"id": p.id, "name": p.name} for p in await projects_of(request.app.state.ctx.db, user)]


@router.get("/api/projects/{project}")
async def project_info(project: Project = Depends(get_project)) -> dict[str, Any]:
    return {"id": project.id, "name": project.name}
