"""Live edits for --reload: a batch of changed files for a running task, and a comparison of files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project
from dstack.server.services import files as files_service
from dstack.server.services.projects import Project

router = APIRouter(prefix="/api/project/{project}/runs/{name}/files")


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # [path, "file" | "dir" | "symlink", size or link target]; the agent checks each entry.
    entries: list[list[Any]] = Field(max_length=20_000)


class ChangesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Paths to delete, then entries to put ([path, kind, mode, size, ref], as in a code manifest); the
    # contents they name must be the project's (POST .../code/blobs) first. The agent checks each entry.
    delete: list[str] = Field(default_factory=list, max_length=100_000)
    put: list[list[Any]] = Field(default_factory=list, max_length=100_000)


@router.post("")
async def apply_changes(
    body: ChangesRequest,
    name: str,
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> dict[str, Any]:
    """Apply a batch of changes (files, folders, symlinks, deletions) to the run's copy of the code."""
    return await files_service.apply(ctx, project, name, body.delete, body.put)


@router.post("/compare")
async def compare_files(
    body: CompareRequest,
    name: str,
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> dict[str, Any]:
    """For each entry: true (the task has it), false (it differs), or the sha256 of a same-size file."""
    return await files_service.compare(ctx, project, name, body.entries)
