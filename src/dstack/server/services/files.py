"""Live edits for `dstack run --reload` (SPEC §7): relaying the CLI's batches to the job's agent.

The server keeps nothing: a batch (a tar, see dstack.agent.filesync) streams from the CLI to the agent
of the host the run is placed on, and the agent's answer comes back with the job's id, so a CLI notices
when a run got a new job (with a fresh copy of the code) and compares its files again.

Statuses the CLI acts on: 409 not yet (the task is not running: keep the changes and retry), 410 never
(the run has finished: stop watching), 503 the host does not answer (retry).
"""

from __future__ import annotations

from typing import Any

from dstack.code.manifest import ManifestError, parse_entries
from dstack.core.statuses import RunStatus
from dstack.server.backends.agent_client import AgentClient, AgentError, AgentUnreachable
from dstack.server.backends.registry import UnknownHost
from dstack.server.context import ServerContext
from dstack.server.services import code as code_service
from dstack.server.services import runs as runs_service
from dstack.server.services.errors import Conflict, Gone, ServiceError, TooLarge, Unavailable
from dstack.server.services.projects import Project

# The agent applies changes only to a running job; earlier, its code is not unpacked yet.
_SYNCABLE = (RunStatus.RUNNING, RunStatus.TERMINATING)


async def apply(
    ctx: ServerContext, project: Project, name: str, deletes: list[str], puts: list[list[Any]]
) -> dict[str, Any]:
    try:
        blobs = parse_entries(puts).blobs
    except ManifestError as e:
        raise ServiceError(f"The batch of changes was refused: {e}") from None
    lacking = await code_service.missing(ctx, project, list(blobs.items()))
    if lacking:
        raise ServiceError(
            f"The changes name {len(lacking)} contents this project has not uploaded; upload them first"
        )
    agent, job_id = await _target(ctx, project, name)
    try:
        await code_service.send_blobs_to_agent(ctx, project.id, blobs, agent)
        result = await agent.sync_files(job_id, {"delete": deletes, "put": puts})
    except AgentError as e:
        raise _relayed(name, e) from e
    return {"job_id": job_id, **result}


async def compare(
    ctx: ServerContext, project: Project, name: str, entries: list[list[Any]]
) -> dict[str, Any]:
    agent, job_id = await _target(ctx, project, name)
    try:
        results = await agent.compare_files(job_id, entries)
    except AgentError as e:
        raise _relayed(name, e) from e
    return {"job_id": job_id, "results": results}


async def _target(ctx: ServerContext, project: Project, name: str) -> tuple[AgentClient, str]:
    run, job = await runs_service.get(ctx, project, name)
    status = RunStatus(run.status)
    if status.is_finished:
        raise Gone(f"Run {name} is {status.value}; it takes no more changes")
    if status not in _SYNCABLE or job is None or job.host_id is None:
        raise Conflict(f"Run {name} is {status.value}; changes reach it once it is running")
    try:
        return ctx.backends.job_agent(job.host_id, job.id), job.id
    except UnknownHost as e:
        raise Unavailable(f"The host of run {name} is not offered by any backend now") from e
    except AgentUnreachable as e:
        raise Unavailable(f"Cannot reach the host of run {name}: {e}") from e


def _relayed(name: str, error: AgentError) -> ServiceError:
    if isinstance(error, AgentUnreachable):
        return Unavailable(f"Cannot reach the host of run {name}; it may be restarting")
    if error.status == 409:
        return Conflict(f"Run {name} is starting; changes reach it once it is running")
    if error.status in (404, 410):
        return Gone(f"Run {name} has finished; it takes no more changes")
    if error.status is not None and error.status < 500:
        error_type = TooLarge if error.status == 413 else ServiceError
        return error_type(str(error))
    return Unavailable(f"The agent of run {name} failed: {error}")
