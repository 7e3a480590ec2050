"""The attach stream: a run's status changes and output, live, from a byte offset, until it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from dstack.core import frames
from dstack.core.statuses import RunStatus
from dstack.server.context import ServerContext
from dstack.server.events import RUNS, Signal, output_channel, run_channel
from dstack.server.services import logs
from dstack.server.services import runs as runs_service
from dstack.server.services.projects import Project

# While output floods, re-read the run row at most this often; a quiet stream re-reads it on every wake.
STATUS_REFRESH = 1.0
STREAM_CHUNK = 256 * 1024
DRAIN_LIMIT = 32 * 1024 * 1024
HEARTBEAT = frames.HEARTBEAT_INTERVAL


async def first_look(
    ctx: ServerContext, project: Project, name: str, node: int | None = None
) -> tuple[runs_service.Shown, int]:
    """The run as a stream starts from it (NotFound for a run that is not there: the route asks before it
    answers), and the version of the runs signal before it was read (see `stream`)."""
    before = ctx.notifier.signal(RUNS).version
    return await runs_service.shown(ctx, project, name, node), before


async def stream(
    ctx: ServerContext,
    project: Project,
    name: str,
    *,
    offset: int,
    follow: bool,
    node: int | None = None,
    first: tuple[runs_service.Shown, int] | None = None,
) -> AsyncIterator[bytes]:
    """`node`: the rank of the node whose output to stream (default: the master's). `first`: `first_look`'s
    answer, when the caller has it: a stream whose run did not change since needs no read to start."""
    run, runs_version = first or await first_look(ctx, project, name, node)
    with ctx.readers.reading(run.id):  # retention leaves a run alone while a client reads it
        async for part in _frames(
            ctx, project, name, run, runs_version, offset=offset, follow=follow, node=node
        ):
            yield part


async def _frames(
    ctx: ServerContext,
    project: Project,
    name: str,
    run: runs_service.Shown,
    runs_version: int,
    *,
    offset: int,
    follow: bool,
    node: int | None,
) -> AsyncIterator[bytes]:
    """`runs_version`: the runs signal's version before `run` was read."""
    status_signal = ctx.notifier.signal(run_channel(run.id))
    output_signal = ctx.notifier.signal(output_channel(run.id))
    # Every change of any run moves the runs signal: if it did not move since `run` was read, `run` is
    # current now, and is read again only when its own signal moves from here. Otherwise at once.
    status_seen = status_signal.version if ctx.notifier.signal(RUNS).version == runs_version else -1
    last_status: tuple[str, str | None] | None = None
    refreshed = time.monotonic()
    reader: logs.LogReader | None = None
    bound = ctx.retention.run_output_limit
    job_id = run.job_id
    try:
        while True:
            status_version, output_version = status_signal.version, output_signal.version
            sent = 0
            if job_id is not None:
                if reader is None or reader.job_id != job_id:
                    if reader is not None:
                        reader.close()
                    reader = logs.LogReader(ctx.settings, job_id, bound)
                # Bounded, so a flood of output still lets status changes through now and then.
                while sent < DRAIN_LIMIT and (data := reader.read(offset, STREAM_CHUNK)):
                    yield frames.log_header(offset, len(data))
                    yield data
                    offset += len(data)
                    sent += len(data)
            # The run is read again when its status signal moved, and every STATUS_REFRESH in any case (other
            # replicas' changes); new output alone never costs a database read.
            if status_version != status_seen or time.monotonic() - refreshed >= STATUS_REFRESH:
                status_seen = status_version
                followed = job_id
                run = await runs_service.shown(ctx, project, name, node)
                job_id = run.job_id
                refreshed = time.monotonic()
                if followed is not None and job_id is not None and job_id != followed:
                    # A scheduled run's job ended and the next one waits for its start: this stream ends.
                    ended = await runs_service.job_by_id(ctx, followed)
                    if ended is not None and offset < logs.size(ctx.settings, ended.id, bound):
                        job_id = ended.id
                        status_seen = -1  # after the drain, look at the run again
                        continue
                    yield frames.json_frame(frames.END, end_payload(ended or run))
                    return
            status = (run.status, run.status_message)
            if status != last_status:
                last_status = status
                yield frames.json_frame(
                    frames.STATUS, {"status": run.status, "status_message": run.status_message}
                )
            if sent:
                continue
            if RunStatus(run.status).is_finished:
                # The supervisor writes all output before it records the end, so one more drain is complete.
                if job_id is not None and offset < logs.size(ctx.settings, job_id, bound):
                    continue
                yield frames.json_frame(frames.END, end_payload(run))
                return
            if not follow:
                return
            if not await _either(status_signal, status_version, output_signal, output_version):
                yield frames.heartbeat_frame()
    finally:
        if reader is not None:
            reader.close()


async def _either(first: Signal, first_seen: int, second: Signal, second_seen: int) -> bool:
    """Wait until either signal moves on from the version seen; False after a heartbeat interval."""
    if first.version != first_seen or second.version != second_seen:
        return True
    waits = [
        asyncio.ensure_future(first.wait(first_seen, HEARTBEAT)),
        asyncio.ensure_future(second.wait(second_seen, HEARTBEAT)),
    ]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return any(task.result() for task in done)
    finally:
        for task in waits:
            task.cancel()


def end_payload(run: Any) -> dict[str, Any]:
    return {
        "status": run.status,
        "exit_code": run.exit_code,
        "termination_reason": run.termination_reason,
        "termination_message": run.termination_message,
    }
