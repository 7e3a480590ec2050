"""Code archives: ask whether the server has one, upload one (content-addressed by SHA-256)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from dstack.server.context import ServerContext
from dstack.server.routers.deps import get_ctx, get_project
from dstack.server.schemas import CODE_HASH_PATTERN
from dstack.server.services import code as code_service
from dstack.server.services.projects import Project

router = APIRouter(prefix="/api/project/{project}/code")


@router.get("/{code_hash}")
async def has_code(
    code_hash: str = Path(pattern=CODE_HASH_PATTERN),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> Response:
    found = await code_service.exists(ctx, project, code_hash)
    return Response(status_code=200 if found else 404)


@router.put("/{code_hash}", status_code=201)
async def upload_code(
    request: Request,
    code_hash: str = Path(pattern=CODE_HASH_PATTERN),
    ctx: ServerContext = Depends(get_ctx),
    project: Project = Depends(get_project),
) -> Response:
    length = request.headers.get("content-length")
    await code_service.store(ctx, project, code_hash, request.stream(), int(length) if length else None)
    return Response(status_code=201)
