"""Uploaded code archives, content-addressed: stored once per hash, visible to the projects that sent them."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from dstack.server.context import ServerContext
from dstack.server.db.models import CodeRow
from dstack.server.services.errors import ServiceError, TooLarge
from dstack.server.services.projects import Project
from dstack.server.settings import ServerSettings


def code_path(settings: ServerSettings, code_hash: str) -> Path:
    return settings.code_dir / f"{code_hash}.tar"


async def exists(ctx: ServerContext, project: Project, code_hash: str) -> bool:
    async with ctx.db.read() as session:
        row = await session.get(CodeRow, (project.id, code_hash))
    return row is not None and code_path(ctx.settings, code_hash).exists()


async def store(
    ctx: ServerContext, project: Project, code_hash: str, body: AsyncIterator[bytes], length: int | None
) -> None:
    limit = ctx.settings.code_limit_bytes
    if length is not None and length > limit:
        raise TooLarge(f"The code archive is {_mb(length)}, over the server's {_mb(limit)} limit")
    target = code_path(ctx.settings, code_hash)
    if not target.exists():
        await _receive(ctx.settings, code_hash, body, limit, target)
    try:
        async with ctx.db.write() as session:
            if await session.get(CodeRow, (project.id, code_hash)) is None:
                session.add(
                    CodeRow(
                        project_id=project.id,
                        hash=code_hash,
                        size=target.stat().st_size,
                        created_at=time.time(),
                    )
                )
    except IntegrityError:
        pass  # a concurrent upload of the same archive recorded it first


async def _receive(
    settings: ServerSettings, code_hash: str, body: AsyncIterator[bytes], limit: int, target: Path
) -> None:
    digest = hashlib.sha256()
    received = 0
    fd, tmp = tempfile.mkstemp(dir=settings.code_dir, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in body:
                received += len(chunk)
                if received > limit:
                    raise TooLarge(f"The code archive is over the server's {_mb(limit)} limit")
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != code_hash:
            raise ServiceError(
                "The uploaded code does not match its hash; the upload was corrupted, try again"
            )
        Path(tmp).replace(target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _mb(size: int) -> str:
    return f"{size / 1024**2:.0f} MB"
