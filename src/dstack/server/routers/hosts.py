"""The hosts the server knows, with their runs, and the offers that fit resource requirements."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project
from dstack.server.services import hosts, offers
from dstack.server.services.projects import Project

router = APIRouter(prefix="/api/project/{project}")


@router.get("/hosts")
async def list_hosts(
    ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> list[dict[str, Any]]:
    """Every host with status, resources, GPUs and the project's runs on it (see services/hosts.py)."""
    return await hosts.list_hosts(ctx, project)


@router.post("/offers")
async def list_offers(
    body: offers.OfferQuery, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    """What `dstack offer` shows for these resource flags: requirements, offers, why none fits."""
    return await offers.offers(ctx, project, body)
