"""The one place a run's status changes. The run mirrors its current job, so both rows move together.

Every change of status (or of the status message, e.g. why a run waits) is also recorded as a row of
`run_transitions`, in the same transaction: the run's history, as `GET .../runs/NAME/history` shows it.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import object_session

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.db.models import JobRow, RunRow, TransitionRow


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
    run.status_message = status_message
    if job is not None:
        job.status = (job_status or status).value
        if status is RunStatus.RUNNING and job.started_at is None:
            job.started_at = now
    if status.is_finished:
        run.finished_at = now
        run.termination_reason = reason.value if reason else None
        run.termination_message = message or (reason.describe(exit_code) if reason else None)
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
