"""The one place a run's status changes. The run mirrors its current job, so both rows move together."""

from __future__ import annotations

import time

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.db.models import JobRow, RunRow


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
    """Call inside a write transaction; notify the run's channel after the commit.

    `job_status`: the job's own status where it differs from its run's — a job handed to a backend's queue
    (Slurm) stays placed while its run shows `pending` with the queue's reason."""
    now = time.time()
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
