"""Runs: plan, submit, list, get, stop, and their output (plain or as the attach stream)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project, get_user
from dstack.server.schemas import CODE_HASH_PATTERN, DeleteRequest, RunRequest, StopRequest
from dstack.server.services import attach, history, logs, plans, run_plan
from dstack.server.services import runs as runs_service
from dstack.server.services.projects import Project
from dstack.server.services.users import User

router = APIRouter(prefix="/api/project/{project}/runs")


@router.post("/plan")
async def plan(
    body: RunRequest,
    code_hash: str | None = Query(default=None, pattern=CODE_HASH_PATTERN),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> dict[str, Any]:
    """`code_hash`: the code the client would send; the plan says whether the project has it (`has_code`),
    which saves a warm `dstack run` the round trip that asks."""
    return await plans.plan(ctx, project, body.spec, code_hash=code_hash)


@router.post("/submit")
async def submit(
    body: RunRequest,
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
    user: User = Depends(get_user),
) -> Response:
    # JSON written here: FastAPI's own encoding of a returned dict walks every value of the spec again.
    return _json(await runs_service.submit(ctx, project, user, body.spec))


@router.get("")
async def list_runs(
    all: bool = False,
    limit: int | None = Query(default=None, ge=1),
    before: str | None = Query(default=None, max_length=128),
    after: str | None = Query(default=None, max_length=128),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> Response:
    """Runs, newest first; with `all`, pages: `before`/`after` = "SUBMITTED_AT:ID" of a listed run."""
    runs = await runs_service.list_runs(
        ctx,
        project,
        all_runs=all,
        limit=limit,
        before=runs_service.parse_cursor(before) if before else None,
        after=runs_service.parse_cursor(after) if after else None,
    )
    return _json(runs)


@router.get("/{name}")
async def get_run(
    name: str, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> Response:
    return _json(await runs_service.describe(ctx, project, name))


def _json(data: Any) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


@router.get("/{name}/history")
async def run_history(
    name: str, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> list[dict[str, Any]]:
    """The run's statuses in order, with their times, messages and (at the end) the reason."""
    return await history.of_run(ctx, project, name)


@router.get("/{name}/plan")
async def placement_of_run(
    name: str, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    """What the run asked for (requirements, profile) and where it was placed."""
    return await run_plan.placement_of(ctx, project, name)


@router.post("/stop")
async def stop(
    body: StopRequest, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> list[dict[str, Any]]:
    return await runs_service.stop(ctx, project, body.names, abort=body.abort)


@router.post("/delete")
async def delete(
    body: DeleteRequest, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    """Delete finished runs and their output (the named ones, or all finished ones)."""
    return {"deleted": await runs_service.delete(ctx, project, body.names, finished=body.finished)}


@router.get("/{name}/logs")
async def run_logs(
    name: str,
    offset: int = Query(default=0, ge=0),
    tail: int | None = Query(default=None, ge=0),
    node: int | None = Query(default=None, ge=0),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> Response:
    """The output so far, as raw bytes (the `X-Log-End` header says where a later read should start);
    a multi-node run's master's, or node `node`'s."""
    run, job = await runs_service.output_job(ctx, project, name, node)
    if job is None:
        return Response(b"", media_type="application/octet-stream", headers={"X-Log-End": "0"})
    path = logs.log_path(ctx.settings, job.id)
    bound = ctx.retention.run_output_limit
    if tail is not None:
        offset = logs.tail_offset(path, tail, bound)
    end = logs.size(ctx.settings, job.id, bound)

    def body() -> Any:
        with ctx.readers.reading(run.id):  # retention leaves a run alone while a client reads it
            position = offset
            while position < end:
                data = logs.read(path, position, min(logs.READ_CHUNK, end - position))
                if not data:
                    return
                position += len(data)
                yield data

    return StreamingResponse(body(), media_type="application/octet-stream", headers={"X-Log-End": str(end)})


@router.get("/{name}/attach")
async def attach_stream(
    name: str,
    offset: int = Query(default=0, ge=0),
    tail: int | None = Query(default=None, ge=0),
    follow: bool = True,
    node: int | None = Query(default=None, ge=0),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> StreamingResponse:
    """Status changes and output as frames (see dstack.core.frames) until the run ends; a multi-node run's
    master's output, or node `node`'s (the status is the run's)."""
    first = await attach.first_look(ctx, project, name, node)  # a missing run is a 404, before the stream
    job_id = first[0].job_id
    if tail is not None and job_id is not None:
        offset = logs.tail_offset(logs.log_path(ctx.settings, job_id), tail, ctx.retention.run_output_limit)
    return StreamingResponse(
        attach.stream(ctx, project, name, offset=offset, follow=follow, node=node, first=first),
        media_type="application/x-dstack-frames",
    )
