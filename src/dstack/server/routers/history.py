"""The project's feed of run status changes: what keeps a list of runs live (the web UI, `ps -w`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project
from dstack.server.services import history
from dstack.server.services.projects import Project

router = APIRouter(prefix="/api/project/{project}")


@router.get("/history")
async def run_changes(
    after: int | None = Query(default=None, ge=0),
    wait: float = Query(default=0.0, ge=0.0, le=60.0),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> dict[str, Any]:
    """{"last", "entries"}: status changes of the project's runs after entry `after`, answered as soon as
    there is one or after `wait` s; without `after`, only where the feed stands now."""
    return await history.changes(ctx, project, after=after, wait=wait)
