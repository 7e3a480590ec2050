"""The one place a run's status changes. The run mirrors its current job, so both rows move together.

`status_values` says what a change writes; `apply_status` applies it to loaded rows (in an ORM session),
`write_job_status` writes it with two UPDATE statements and nothing loaded: the supervisor's path, taken
a few times by every job, where loading and flushing ORM objects was the server's largest cost.
"""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import Table, func, update

from dstack.core.statuses import FINISHED_STATUSES, RunStatus, TerminationReason
from dstack.server.db.models import JobRow, RunRow

_STARTED_AT = "started_at"  # set once: the first time a job is seen running
_STOPPING = [RunStatus.TERMINATING.value, *(s.value for s in FINISHED_STATUSES)]


def status_values(
    status: RunStatus,
    *,
    reason: TerminationReason | None = None,
    message: str | None = None,
    exit_code: int | None = None,
    status_message: str | None = None,
    now: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The columns the change writes: (run's, job's). The job's `started_at` is only set if unset."""
    now = time.time() if now is None else now
    run: dict[str, Any] = {"status": status.value, "status_message": status_message}
    job: dict[str, Any] = {"status": status.value}
    if status is RunStatus.RUNNING:
        job[_STARTED_AT] = now
    if status.is_finished:
        termination_reason = reason.value if reason else None
        termination_message = message or (reason.describe(exit_code) if reason else None)
        run.update(
            finished_at=now,
            termination_reason=termination_reason,
            termination_message=termination_message,
            exit_code=exit_code,
            status_message=None,
        )
        job.update(
            finished_at=now,
            exit_code=exit_code,
            termination_reason=termination_reason,
            termination_message=termination_message,
            lock_token=None,
            lock_expires_at=None,
        )
    return run, job


def apply_status(
    run: RunRow,
    job: JobRow | None,
    status: RunStatus,
    *,
    reason: TerminationReason | None = None,
    message: str | None = None,
    exit_code: int | None = None,
    status_message: str | None = None,
) -> None:
    """Call inside a write transaction; notify the run's channel after the commit."""
    run_values, job_values = status_values(
        status, reason=reason, message=message, exit_code=exit_code, status_message=status_message
    )
    for name, value in run_values.items():
        setattr(run, name, value)
    if job is not None:
        for name, value in job_values.items():
            if name != _STARTED_AT or job.started_at is None:
                setattr(job, name, value)


async def write_job_status(
    session: Any,
    run_id: str,
    job_id: str,
    token: str,
    status: RunStatus,
    *,
    unless_stopping: bool = False,
    **details: Any,
) -> bool:
    """The change for a job its caller holds the lease of (`token`); False, writing nothing, if the job
    no longer carries that token, or (with `unless_stopping`) if a stop or an end was recorded already."""
    run_values, job_values = status_values(status, **details)
    # The tables, not the ORM classes: an ORM UPDATE would also search the session for rows to refresh.
    job_table, run_table = cast(Table, JobRow.__table__), cast(Table, RunRow.__table__)
    jobs, runs = job_table.c, run_table.c
    if _STARTED_AT in job_values:
        job_values[_STARTED_AT] = func.coalesce(jobs.started_at, job_values[_STARTED_AT])
    condition = [jobs.id == job_id, jobs.lock_token == token]
    if unless_stopping:
        condition.append(jobs.status.notin_(_STOPPING))  # the job's status mirrors its run's
    result = await session.execute(update(job_table).where(*condition).values(**job_values))
    if result.rowcount != 1:
        return False
    await session.execute(update(run_table).where(runs.id == run_id).values(**run_values))
    return True
