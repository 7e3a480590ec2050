"""The one place a run's status changes. The run mirrors its current job, so both rows move together.

Every change of status (or of the status message, e.g. why a run waits) is also recorded as a row of
`run_transitions`, in the same transaction: the run's history, as `GET .../runs/NAME/history` shows it.

`status_values` says what a change writes; `apply_status` applies it to loaded rows (in an ORM session),
`write_job_status` writes it with plain UPDATE and INSERT statements and nothing loaded: the supervisor's
path, taken a few times by every job, where loading and flushing ORM objects was the server's largest cost.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

from sqlalchemy import Table, func, insert, update
from sqlalchemy.orm import object_session

from dstack.config.cron import format_utc, next_start
from dstack.core.statuses import FINISHED_STATUSES, RunStatus, TerminationReason
from dstack.core.text import one_line
from dstack.server.db.models import JobRow, RunRow, TransitionRow

# Ends that stop a scheduled run for good; any other end waits for its next start.
_FINAL_FOR_SCHEDULED = (TerminationReason.STOPPED_BY_USER, TerminationReason.ABORTED_BY_USER)

# Messages come from agents, hosts and tools (a build's error, Docker's); `ps` shows them in a table cell.
MESSAGE_LIMIT = 500

_STARTED_AT = "started_at"  # set once: the first time a job is seen running
_STOPPING = [RunStatus.TERMINATING.value, *(s.value for s in FINISHED_STATUSES)]
_HISTORY = ("status", "status_message", "termination_reason", "termination_message", "exit_code")


def status_values(
    status: RunStatus,
    *,
    reason: TerminationReason | None = None,
    message: str | None = None,
    exit_code: int | None = None,
    status_message: str | None = None,
    job_status: RunStatus | None = None,
    now: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The columns the change writes: (run's, job's). The job's `started_at` is only set if unset.

    `job_status`: the job's own status where it differs from its run's — a job handed to a backend's queue
    (Slurm) stays placed while its run shows `pending` with the queue's reason."""
    now = time.time() if now is None else now
    status_message = one_line(status_message, MESSAGE_LIMIT) if status_message else None
    run: dict[str, Any] = {"status": status.value, "status_message": status_message}
    job: dict[str, Any] = {"status": (job_status or status).value}
    if status is RunStatus.RUNNING:
        job[_STARTED_AT] = now
    if status.is_finished:
        termination_reason = reason.value if reason else None
        termination_message = message or (reason.describe(exit_code) if reason else None)
        termination_message = one_line(termination_message, MESSAGE_LIMIT) if termination_message else None
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


def note(run: RunRow, status_message: str | None) -> None:
    """Say what an active run is going through (its host does not answer...) without changing its status."""
    if not RunStatus(run.status).is_finished:
        run.status_message = one_line(status_message, MESSAGE_LIMIT) if status_message else None


def apply_status(
    run: RunRow,
    job: JobRow | None,
    status: RunStatus,
    *,
    reason: TerminationReason | None = None,
    message: str | None = None,
    exit_code: int | None = None,
    status_message: str | None = None,
    job_status: RunStatus | None = None,
) -> None:
    """Call inside a write transaction (on rows of its session); notify the run's channel after the commit."""
    now = time.time()
    before = (run.status, run.status_message)
    run_values, job_values = status_values(
        status,
        reason=reason,
        message=message,
        exit_code=exit_code,
        status_message=status_message,
        job_status=job_status,
        now=now,
    )
    for name, value in run_values.items():
        setattr(run, name, value)
    if job is not None:
        for name, value in job_values.items():
            if name != _STARTED_AT or job.started_at is None:
                setattr(job, name, value)
    if (run.status, run.status_message) != before:
        _record(run, now)


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
    no longer carries that token, or (with `unless_stopping`) if a stop or an end was recorded already.
    The caller only asks for a change it has not seen recorded: each one is a history entry too."""
    now = time.time()
    run_values, job_values = status_values(status, now=now, **details)
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
    entry = {name: run_values.get(name) for name in _HISTORY}
    await session.execute(insert(cast(Table, TransitionRow.__table__)).values(run_id=run_id, at=now, **entry))
    return True


def record_submitted(session: Any, run: RunRow) -> None:
    """The first entry of a new run's history (call after the run row is added to `session`)."""
    _record(run, run.submitted_at, session)


def submitted_entry(run: RunRow) -> dict[str, Any]:
    """The same entry as a row to INSERT (for a submission written with plain statements)."""
    return {
        "run_id": run.id,
        "at": run.submitted_at,
        "status": run.status,
        "status_message": run.status_message,
    }


def _record(run: RunRow, at: float, session: Any = None) -> None:
    session = session if session is not None else object_session(run)
    if session is None:
        raise RuntimeError("apply_status needs a run row that belongs to a write session")
    finished = RunStatus(run.status).is_finished
    session.add(
        TransitionRow(
            run_id=run.id,
            at=at,
            status=run.status,
            status_message=run.status_message,
            termination_reason=run.termination_reason if finished else None,
            termination_message=run.termination_message if finished else None,
            exit_code=run.exit_code if finished else None,
        )
    )


def end_job(
    run: RunRow,
    job: JobRow | None,
    status: RunStatus,
    *,
    reason: TerminationReason | None = None,
    message: str | None = None,
    exit_code: int | None = None,
) -> JobRow | None:
    """Record a job's end. A run with a `schedule` then waits for its next start with a new job, which
    is returned for the caller to add to its session; a stop by its user ends it for good."""
    apply_status(run, job, status, reason=reason, message=message, exit_code=exit_code)
    if not run.schedule or reason in _FINAL_FOR_SCHEDULED:
        return None
    now = time.time()
    upcoming = next_start(json.loads(run.schedule), now)
    if upcoming is None:
        return None
    window = (
        run.retry_deadline - run.next_start_at
        if run.retry_deadline is not None and run.next_start_at is not None
        else None
    )
    following = JobRow(
        id=str(uuid.uuid4()),
        run_id=run.id,
        submission_num=(job.submission_num + 1) if job is not None else 1,
        status=RunStatus.PENDING.value,
        submitted_at=now,
    )
    run.next_start_at = upcoming
    run.retry_deadline = upcoming + window if window is not None else None
    apply_status(run, following, RunStatus.PENDING, status_message=scheduled_message(upcoming, status))
    return following


def scheduled_message(upcoming: float, last: RunStatus | None = None) -> str:
    text = f"Scheduled: next start {format_utc(upcoming)}"
    return f"{text} (last run: {last.value})" if last is not None else text
