"""The one place a run's status changes. The run mirrors its current job, so both rows move together."""

from __future__ import annotations

import time

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.core.text import one_line
from dstack.server.db.models import JobRow, RunRow

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
) -> None:
    """Call inside a write transaction; notify the run's channel after the commit."""
    now = time.time()
    run.status = status.value
    run.status_message = one_line(status_message, MESSAGE_LIMIT) if status_message else None
    if job is not None:
        job.status = status.value
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
