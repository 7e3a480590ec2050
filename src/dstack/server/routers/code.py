"""Code (dstack.code.manifest): does the project have it, which contents does it lack, upload contents
(a blob stream), upload the manifest. Everything is the project's own (services/code.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response

from dstack.code.blobs import HEADER
from dstack.code.manifest import MAX_ENTRIES
from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project
from dstack.server.schemas import CODE_HASH_PATTERN
from dstack.server.services import code as code_service
from dstack.server.services.projects import Project

router = APIRouter(prefix="/api/project/{project}/code")


@router.post("/missing")
async def missing_blobs(
    request: Request, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    """Which of the contents named in the body the project lacks: {"missing": [sha256, ...]}. The body is
    the (sha256, size) of each content, 40 bytes apiece, as in a blob stream's headers (dstack.code.blobs):
    compact for the hundreds of thousands of files a big repository may hold."""
    wanted = await code_service.read_limited(request.stream(), MAX_ENTRIES * HEADER.size, "list of contents")
    return {"missing": await code_service.missing(ctx, project, code_service.parse_wanted(wanted))}


@router.post("/blobs", status_code=201)
async def upload_blobs(
    request: Request, ctx: ServerContext = Depends(get_ctx), project: Project = Depends(get_project)
) -> dict[str, Any]:
    length = request.headers.get("content-length", "")
    count = await code_service.receive_blobs(
        ctx, project, request.stream(), int(length) if length.isdigit() else None
    )
    return {"stored": count}


@router.get("/{code_hash}")
async def has_code(
    code_hash: str = Path(pattern=CODE_HASH_PATTERN),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> Response:
    found = await code_service.exists(ctx, project, code_hash)
    return Response(status_code=200 if found else 404)


@router.put("/{code_hash}", status_code=201)
async def upload_manifest(
    request: Request,
    code_hash: str = Path(pattern=CODE_HASH_PATTERN),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> Response:
    await code_service.store_manifest(ctx, project, code_hash, request.stream())
    return Response(status_code=201)
