"""Fleets of the user's own hosts: plan and apply a `type: fleet` configuration, list, get, delete. (The
hosts a project can run on, fleets' and this machine's, are `GET .../hosts`: routers/hosts.py.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project
from dstack.server.services import fleets as fleets_service
from dstack.server.services.projects import Project

router = APIRouter(prefix="/api/project/{project}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FleetPlanRequest(_Strict):
    configuration: dict[str, Any]  # a FleetConfiguration, validated again here


class FleetApplyRequest(_Strict):
    configuration: dict[str, Any]
    # The identity files the configuration names, as the CLI read them: {path as written: base64}.
    identity_files: dict[str, str] = Field(default_factory=dict, max_length=100)
    force: bool = False  # stop the runs on hosts that leave the fleet


class FleetDeleteRequest(_Strict):
    names: list[str] = Field(min_length=1, max_length=100)
    force: bool = False  # stop the runs on the fleets' hosts


@router.post("/fleets/plan")
async def plan(
    body: FleetPlanRequest, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    return await fleets_service.plan(ctx, project, body.configuration)


@router.post("/fleets/apply")
async def apply(
    body: FleetApplyRequest, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    keys = fleets_service.read_keys(body.identity_files)
    return await fleets_service.apply(ctx, project, body.configuration, keys, force=body.force)


@router.get("/fleets")
async def list_fleets(
    ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> list[dict[str, Any]]:
    return await fleets_service.list_fleets(ctx, project)


@router.get("/fleets/{name}")
async def get_fleet(
    name: str, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    return await fleets_service.get(ctx, project, name)


@router.post("/fleets/delete")
async def delete(
    body: FleetDeleteRequest, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    deleted = await fleets_service.delete(ctx, project, body.names, force=body.force)
    return {"deleted": deleted}
