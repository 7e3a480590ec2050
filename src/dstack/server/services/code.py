"""Uploaded code, content-addressed and kept per project (SPEC §6; dstack.code.manifest).

A project's code is a manifest (the tree, naming each file by the sha256 of its content) plus the
contents, stored under code/<project id>/: `blobs/ab/<sha256>` and `manifests/<code hash>`. Nothing is
shared between projects, and every content is hashed as it arrives, so a project can only use code whose
bytes it sent itself: naming another project's hashes gets it nothing (issue 13, item 7).

To a host, code travels the same way (`send_to_agent`): the agent says which contents it lacks, they go in
one streamed request, then the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy.exc import IntegrityError

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
from dstack.server.services.errors import ServiceError, TooLarge
from dstack.server.services.projects import Project
from dstack.server.settings import ServerSettings

_TEMP_PREFIX = ".upload-"
_BATCH_BYTES = 1024 * 1024
_SMALL = 256 * 1024
_WRITERS = 4
_MAX_PENDING_WRITES = 256


def project_dir(settings: ServerSettings, project_id: str) -> Path:
    return settings.code_dir / project_id


def blob_path(settings: ServerSettings, project_id: str, sha256: str) -> Path:
    return project_dir(settings, project_id) / "blobs" / sha256[:2] / sha256


def manifest_path(settings: ServerSettings, project_id: str, code_hash_: str) -> Path:
    return project_dir(settings, project_id) / "manifests" / code_hash_


async def exists(ctx: ServerContext, project: Project, code_hash_: str) -> bool:
    async with ctx.db.read() as session:
        row = await session.get(CodeRow, (project.id, code_hash_))
    return row is not None and manifest_path(ctx.settings, project.id, code_hash_).is_file()


async def missing(ctx: ServerContext, project: Project, blobs: list[tuple[str, int]]) -> list[str]:
    """The contents this project has not uploaded (of those named, with their sizes)."""
    return await asyncio.to_thread(_missing, ctx.settings, project.id, blobs)


def _missing(settings: ServerSettings, project_id: str, blobs: list[tuple[str, int]]) -> list[str]:
    lacking = []
    for sha256, size in blobs:
        try:
            # The size check catches a content cut short by a crash before it reached the disk.
            present = blob_path(settings, project_id, sha256).stat().st_size == size
        except OSError:
            present = False
        if not present:
            lacking.append(sha256)
    return lacking


async def receive_blobs(
    ctx: ServerContext, project: Project, body: AsyncIterator[bytes], length: int | None
) -> int:
    """Store the contents of a blob stream (dstack.code.blobs); returns how many it held."""
    limit = ctx.settings.code_limit_bytes
    if length is not None and length > limit + HEADER.size * MAX_ENTRIES:
        raise TooLarge(f"The code upload is {_mb(length)}, over the server's {_mb(limit)} limit")
    receiver = BlobReceiver(project_dir(ctx.settings, project.id) / "blobs", limit)
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
        await agent.upload_blobs([(blob_path(ctx.settings, project_id, h), h, blobs[h]) for h in lacking])


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


class BlobReceiver:
    """Writes a blob stream into a folder of contents as it arrives, keeping only verified ones.

    str paths and os calls, not pathlib: a repository's thousands of small files make this a hot loop.
    """

    def __init__(self, folder: Path, limit: int) -> None:
        self._folder = os.fspath(folder)
        self._limit = limit
        self._received = 0
        self._count = 0
        self._header = b""
        self._in_blob = False
        self._sha256 = ""
        self._left = 0
        self._digest: hashlib._Hash | None = None  # None while skipping a content already stored
        self._fd: int | None = None
        self._temp: str | None = None
        self._folders: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[Future[None]] = []
        self._temp_prefix = f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-"

    def feed_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.feed(chunk)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not self._in_blob:
                need = HEADER.size - len(self._header)
                self._header += bytes(view[:need])
                view = view[need:]
                if len(self._header) == HEADER.size:
                    raw, size = HEADER.unpack(self._header)
                    if size <= min(len(view), _SMALL):
                        # A small content whole in this piece: hashed and written by the pool (files are
                        # created by the file system far slower than by us; a repository has thousands).
                        self._header = b""
                        self._small(raw.hex(), view[:size])
                        view = view[size:]
                    else:
                        self._start()
                continue
            piece = view[: self._left]
            view = view[len(piece) :]
            self._left -= len(piece)
            if self._digest is not None and self._fd is not None:
                self._digest.update(piece)
                while piece:
                    piece = piece[os.write(self._fd, piece) :]
            if self._left == 0:
                self._end()

    def _small(self, sha256: str, data: memoryview) -> None:
        self._received += len(data)
        if self._received > self._limit:
            raise TooLarge(f"The code upload is over the server's {_mb(self._limit)} limit")
        folder = f"{self._folder}/{sha256[:2]}"
        if os.path.exists(f"{folder}/{sha256}"):  # noqa: PTH110 (str paths, see above)
            return
        self._count += 1
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="code-upload")
        self._writes.append(self._pool.submit(self._write_small, folder, sha256, data, self._count))
        if len(self._writes) >= _MAX_PENDING_WRITES:  # each holds a piece of the body in memory
            self._writes.pop(0).result()

    def _write_small(self, folder: str, sha256: str, data: memoryview, serial: int) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise _mismatch(sha256)
        os.makedirs(folder, exist_ok=True)  # noqa: PTH103
        temp = f"{folder}/{self._temp_prefix}{serial}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while data:
                data = data[os.write(fd, data) :]
        except BaseException:
            os.close(fd)
            os.unlink(temp)  # noqa: PTH108
            raise
        os.close(fd)
        os.replace(temp, f"{folder}/{sha256}")  # noqa: PTH105

    def _start(self) -> None:
        raw, size = HEADER.unpack(self._header)
        self._header = b""
        self._in_blob, self._sha256, self._left = True, raw.hex(), size
        self._received += size
        if self._received > self._limit:
            raise TooLarge(f"The code upload is over the server's {_mb(self._limit)} limit")
        folder = f"{self._folder}/{self._sha256[:2]}"
        if not os.path.exists(f"{folder}/{self._sha256}"):  # noqa: PTH110 (str paths, see above)
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)  # noqa: PTH103
                self._folders.add(folder)
            self._count += 1
            self._temp = f"{folder}/{self._temp_prefix}{self._count}"
            self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._digest = hashlib.sha256()
        if size == 0:
            self._end()

    def _end(self) -> None:
        self._in_blob = False
        if self._digest is None or self._fd is None or self._temp is None:
            return  # stored already: these bytes were not needed
        os.close(self._fd)
        self._fd = None
        if self._digest.hexdigest() != self._sha256:
            raise _mismatch(self._sha256)
        self._digest = None
        os.replace(self._temp, f"{self._folder}/{self._sha256[:2]}/{self._sha256}")  # noqa: PTH105
        self._temp = None

    def finish(self) -> int:
        """How many contents were new (the others were here already)."""
        self._wait_for_writes()
        if self._in_blob or self._header:
            raise ServiceError("The code upload ended in the middle of a content; send it again")
        return self._count

    def _wait_for_writes(self) -> None:
        writes, self._writes = self._writes, []
        error: BaseException | None = None
        for write in writes:
            try:
                write.result()
            except BaseException as e:  # every write is waited for; the first failure is the answer
                error = error or e
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if error is not None:
            raise error

    def abort(self) -> None:
        """Remove what an unfinished content left (after finish(), nothing is left)."""
        with contextlib.suppress(BaseException):
            self._wait_for_writes()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)  # noqa: PTH108
            self._temp = None


def _mismatch(sha256: str) -> ServiceError:
    return ServiceError(
        f"The uploaded content {sha256[:12]} does not match its hash; the upload was corrupted, try again"
    )


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
