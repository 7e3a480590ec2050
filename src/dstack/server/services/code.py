"""Uploaded code, content-addressed and kept per project (SPEC §6; dstack.code.manifest).

A project's code is a manifest (the tree, naming each file by the sha256 of its content) plus the
contents, stored under code/<project id>/ (blobstore.py) and `manifests/<code hash>`. Nothing is
shared between projects, and every content is hashed as it arrives, so a project can only use code whose
bytes it sent itself: naming another project's hashes gets it nothing (issue 13, item 7).

To a host, code travels the same way (`send_to_agent`): the agent says which contents it lacks, they go in
one streamed request, then the manifest.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.code.blobs import HEADER
from dstack.code.manifest import (
    MAX_ENTRIES,
    MAX_MANIFEST_BYTES,
    ManifestError,
    code_hash,
    parse_manifest,
)
from dstack.server.backends.agent_client import AgentClient
from dstack.server.context import ServerContext
from dstack.server.db.models import CodeRow
from dstack.server.services.blobstore import ProjectStore, store_at
from dstack.server.services.errors import ServiceError, TooLarge
from dstack.server.services.projects import Project
from dstack.server.settings import ServerSettings

_TEMP_PREFIX = ".upload-"
_BATCH_BYTES = 1024 * 1024


def project_dir(settings: ServerSettings, project_id: str) -> Path:
    return settings.code_dir / project_id


def store(settings: ServerSettings, project_id: str) -> ProjectStore:
    return store_at(project_dir(settings, project_id))


def manifest_path(settings: ServerSettings, project_id: str, code_hash_: str) -> Path:
    return project_dir(settings, project_id) / "manifests" / code_hash_


async def exists(ctx: ServerContext, project: Project, code_hash_: str) -> bool:
    async with ctx.db.read() as session:
        return await stored(session, ctx, project, code_hash_)


async def stored(session: AsyncSession, ctx: ServerContext, project: Project, code_hash_: str) -> bool:
    """Whether the project has this code (its row, and its manifest on disk), read in `session`."""
    row = await session.get(CodeRow, (project.id, code_hash_))
    return row is not None and manifest_path(ctx.settings, project.id, code_hash_).is_file()


async def missing(ctx: ServerContext, project: Project, blobs: list[tuple[str, int]]) -> list[str]:
    """The contents this project has not uploaded (of those named, with their sizes)."""
    return await asyncio.to_thread(store(ctx.settings, project.id).missing, blobs)


async def receive_blobs(
    ctx: ServerContext, project: Project, body: AsyncIterator[bytes], length: int | None
) -> int:
    """Store the contents of a blob stream (dstack.code.blobs); returns how many it held."""
    limit = ctx.settings.code_limit_bytes
    if length is not None and length > limit + HEADER.size * MAX_ENTRIES:
        raise TooLarge(f"The code upload is {_mb(length)}, over the server's {_mb(limit)} limit")
    receiver = store(ctx.settings, project.id).receiver(limit)
    # Hashing and writing happen in a thread, a batch at a time, while the loop receives the next batch:
    # the two overlap, and the loop stays free for other requests.
    loop = asyncio.get_running_loop()
    in_flight: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    size = 0
    try:
        async for chunk in body:
            batch.append(chunk)
            size += len(chunk)
            if size >= _BATCH_BYTES:
                if in_flight is not None:
                    await in_flight
                in_flight = loop.run_in_executor(None, receiver.feed_all, batch)
                batch, size = [], 0
        if in_flight is not None:
            await in_flight
        await loop.run_in_executor(None, receiver.feed_all, batch)
        return receiver.finish()
    finally:
        if in_flight is not None and not in_flight.done():
            await asyncio.wait([in_flight])
        receiver.abort()


async def store_manifest(
    ctx: ServerContext, project: Project, code_hash_: str, body: AsyncIterator[bytes]
) -> None:
    """Record the project's code once every content its manifest names is the project's own."""
    manifest = await read_limited(body, MAX_MANIFEST_BYTES, "code manifest")
    if code_hash(manifest) != code_hash_:
        raise ServiceError(
            "The uploaded manifest does not match its hash; the upload was corrupted, try again"
        )
    try:
        parsed = parse_manifest(manifest)
    except ManifestError as e:
        raise ServiceError(f"The code was refused: {e}") from None
    limit = ctx.settings.code_limit_bytes
    if parsed.total_bytes > limit:
        raise TooLarge(f"The code is {_mb(parsed.total_bytes)}, over the server's {_mb(limit)} limit")
    lacking = await missing(ctx, project, list(parsed.blobs.items()))
    if lacking:
        raise ServiceError(
            f"The code names {len(lacking)} contents this project has not uploaded (e.g. {lacking[0][:12]}); "
            "upload them first"
        )
    target = manifest_path(ctx.settings, project.id, code_hash_)
    await asyncio.to_thread(_write_atomically, target, manifest)
    try:
        async with ctx.db.write() as session:
            if await session.get(CodeRow, (project.id, code_hash_)) is None:
                session.add(
                    CodeRow(
                        project_id=project.id,
                        hash=code_hash_,
                        size=parsed.total_bytes,
                        created_at=time.time(),
                    )
                )
    except IntegrityError:
        pass  # a concurrent upload of the same code recorded it first


async def send_to_agent(ctx: ServerContext, project_id: str, code_hash_: str, agent: AgentClient) -> None:
    """Make sure the agent holds the code: it names the contents it lacks, they travel in one request."""
    if await agent.has_code(code_hash_):
        return
    try:
        manifest = manifest_path(ctx.settings, project_id, code_hash_).read_bytes()
    except FileNotFoundError:
        raise ServiceError(
            f"Code {code_hash_[:12]} is not stored on the server any more; run again"
        ) from None
    await send_blobs_to_agent(ctx, project_id, parse_manifest(manifest).blobs, agent)
    await agent.put_manifest(code_hash_, manifest)


async def send_blobs_to_agent(
    ctx: ServerContext, project_id: str, blobs: dict[str, int], agent: AgentClient
) -> None:
    """Those of these contents (the project's own) the agent lacks, in one streamed request."""
    lacking = await agent.missing_blobs(blobs)
    if lacking:
        await agent.upload_blobs([(h, blobs[h]) for h in lacking], store(ctx.settings, project_id))


async def read_limited(body: AsyncIterator[bytes], limit: int, what: str) -> bytes:
    parts, received = [], 0
    async for chunk in body:
        received += len(chunk)
        if received > limit:
            raise TooLarge(f"The {what} is over {limit // 1024**2} MB")
        parts.append(chunk)
    return b"".join(parts)


def parse_wanted(data: bytes) -> list[tuple[str, int]]:
    """(sha256, size) pairs from their 40-byte form (a blob stream's headers without contents)."""
    if len(data) % HEADER.size:
        raise ServiceError("The list of contents must be 40-byte entries: a sha256 and a size")
    return [(raw.hex(), size) for raw, size in HEADER.iter_unpack(data)]


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(temp, "xb") as f:
            f.write(data)
        temp.replace(target)
    finally:
        temp.unlink(missing_ok=True)


def _mb(size: int) -> str:
    return f"{size / 1024**2:.0f} MB"
