"""The one place a run's status changes. The run mirrors its current job, so both rows move together.

Every change of status (or of the status message, e.g. why a run waits) is also recorded as a row of
`run_transitions`, in the same transaction: the run's history, as `GET .../runs/NAME/history` shows it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from sqlalchemy.orm import object_session

from dstack.config.cron import format_utc, next_start
from dstack.core.statuses import RunStatus, TerminationReason
from dstack.core.text import one_line
from dstack.server.db.models import JobRow, RunRow, TransitionRow

# Ends that stop a scheduled run for good; any other end waits for its next start.
_FINAL_FOR_SCHEDULED = (TerminationReason.STOPPED_BY_USER, TerminationReason.ABORTED_BY_USER)

# Messages come from agents, hosts and tools (a build's error, Docker's); `ps` shows them in a table cell.
MESSAGE_LIMIT = 500


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
    """Call inside a write transaction (on rows of its session); notify the run's channel after the commit.

    `job_status`: the job's own status where it differs from its run's — a job handed to a backend's queue
    (Slurm) stays placed while its run shows `pending` with the queue's reason."""
    now = time.time()
    before = (run.status, run.status_message)
    run.status = status.value
    run.status_message = one_line(status_message, MESSAGE_LIMIT) if status_message else None
    if job is not None:
        job.status = (job_status or status).value
        if status is RunStatus.RUNNING and job.started_at is None:
            job.started_at = now
    if status.is_finished:
        run.finished_at = now
        run.termination_reason = reason.value if reason else None
        message = message or (reason.describe(exit_code) if reason else None)
        run.termination_message = one_line(message, MESSAGE_LIMIT) if message else None
        run.exit_code = exit_code
        run.status_message = None
        if job is not None:
            job.finished_at = now
            job.exit_code = exit_code
            job.termination_reason = run.termination_reason
            job.termination_message = run.termination_message
            job.lock_token = None
            job.lock_expires_at = None
    if (run.status, run.status_message) != before:
        _record(run, now)


def record_submitted(session: Any, run: RunRow) -> None:
    """The first entry of a new run's history (call after the run row is added to `session`)."""
    _record(run, run.submitted_at, session)


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
