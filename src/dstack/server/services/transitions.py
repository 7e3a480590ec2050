"""The one place a run's status changes. A single-node run mirrors its current job, so both rows move
together; a multi-node run (one job per node, `job_num` its rank) shows the least advanced of its nodes,
and ends once every node has ended (`end_node`): the first node that failed decides how (its reason, with
the node named), a user's stop otherwise, else it is done. A node that fails, or the master ending under
`stop_criteria: master-done`, asks the others to stop (`stop_requested = NODE_ENDED`).

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
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, func, update
from sqlalchemy.orm import object_session

from dstack.config.cron import format_utc, next_start
from dstack.core.statuses import FINISHED_STATUSES, RunStatus, TerminationReason
from dstack.core.text import one_line
from dstack.server.db.engine import insert_at_commit
from dstack.server.db.models import JobRow, RunRow, TransitionRow

# Ends that stop a scheduled run for good; any other end waits for its next start.
_FINAL_FOR_SCHEDULED = (TerminationReason.STOPPED_BY_USER, TerminationReason.ABORTED_BY_USER)
# runs.stop_requested: a user's graceful stop or abort, or the run's own end (a node ended it).
STOP = "stop"
ABORT = "abort"
NODE_ENDED = "node_ended"
# A node's end that is not a result of its own: the run stopped it.
_STOPPED_WITH_RUN = {
    TerminationReason.TERMINATED_BY_SERVER.value,
    TerminationReason.STOPPED_BY_USER.value,
    TerminationReason.ABORTED_BY_USER.value,
}
_PROGRESS = [
    RunStatus.SUBMITTED,
    RunStatus.PENDING,
    RunStatus.PROVISIONING,
    RunStatus.PULLING,
    RunStatus.RUNNING,
    RunStatus.TERMINATING,
]

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
        _set_job(job, job_values)
    if (run.status, run.status_message) != before:
        _record(run, now)


def _set_job(job: JobRow, values: dict[str, Any]) -> None:
    for name, value in values.items():
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
    insert_at_commit(session, cast(Table, TransitionRow.__table__), [{"run_id": run_id, "at": now, **entry}])
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
    following = _next_start(run, [job] if job is not None else [], status, reason)
    return following[0] if following else None


def end_run(
    run: RunRow,
    jobs: Sequence[JobRow],
    status: RunStatus,
    *,
    reason: TerminationReason | None = None,
    message: str | None = None,
    exit_code: int | None = None,
) -> list[JobRow]:
    """End a run and every unfinished job of it at once (it could not be placed; stopped while waiting).
    Returns the next start's jobs of a scheduled run, for the caller to add."""
    for job in jobs:
        if not RunStatus(job.status).is_finished:
            apply_status(run, job, status, reason=reason, message=message, exit_code=exit_code)
    apply_status(run, None, status, reason=reason, message=message, exit_code=exit_code)
    return _next_start(run, jobs, status, reason)


def move_node(
    run: RunRow,
    job: JobRow,
    nodes: Sequence[JobRow],
    status: RunStatus,
    *,
    status_message: str | None = None,
    job_status: RunStatus | None = None,
) -> None:
    """A job moved on (placed, pulling, running, waiting in a backend's queue). `nodes`: every job of its
    run's current submission. Its run shows the least advanced of the nodes that have not ended."""
    if len(nodes) <= 1:
        apply_status(run, job, status, status_message=status_message, job_status=job_status)
        return
    _set_job(job, status_values(status, job_status=job_status)[1])
    shown = _least_advanced([status, *(_job_stage(n) for n in nodes if n.id != job.id)])
    if shown is None:
        return
    # The message of the node the run now shows (a backend's queue reason, "Pulling image x").
    kept = run.status_message if shown.value == run.status else None
    apply_status(run, None, shown, status_message=status_message if shown is status else kept)


def end_node(
    run: RunRow,
    job: JobRow,
    nodes: Sequence[JobRow],
    status: RunStatus,
    *,
    reason: TerminationReason | None = None,
    message: str | None = None,
    exit_code: int | None = None,
    stop_criteria: str = "all-done",
) -> tuple[list[JobRow], bool]:
    """Record one node's end. Returns the next start's jobs (a scheduled run whose every node ended) and
    whether the other nodes must now stop (the caller tells their supervisors after the commit)."""
    if len(nodes) <= 1:
        following = end_job(run, job, status, reason=reason, message=message, exit_code=exit_code)
        return ([following] if following is not None else []), False
    if reason is TerminationReason.TERMINATED_BY_SERVER and message is None:
        message = f"terminated by the server: {_cause(nodes, job) or 'its run ended'}"
    _set_job(job, status_values(status, reason=reason, message=message, exit_code=exit_code)[1])
    stops_others = False
    if run.stop_requested is None:
        master_done = status is RunStatus.DONE and job.job_num == 0 and stop_criteria == "master-done"
        if status is not RunStatus.DONE or master_done:
            run.stop_requested = NODE_ENDED
            stops_others = True
    unfinished = [n for n in nodes if not RunStatus(n.status).is_finished]
    if unfinished:
        if run.stop_requested is not None:
            cause = _cause(nodes, None)
            note_text = f"{cause}; stopping the other nodes" if stops_others and cause else run.status_message
            apply_status(run, None, RunStatus.TERMINATING, status_message=note_text)
        else:
            shown = _least_advanced([_job_stage(n) for n in unfinished])
            if shown is not None and shown.value != run.status:
                apply_status(run, None, shown)
        return [], stops_others
    status, reason, message, exit_code = _outcome(nodes, run.stop_requested)
    apply_status(run, None, status, reason=reason, message=message, exit_code=exit_code)
    return _next_start(run, nodes, status, reason), stops_others


def node_label(job: JobRow) -> str:
    """ "node 1 (host2)": how messages name a node of a multi-node run."""
    return f"node {job.job_num}" + (f" ({job.hostname})" if job.hostname else "")


def _failed(job: JobRow) -> bool:
    return (
        RunStatus(job.status).is_finished
        and job.status != RunStatus.DONE.value
        and job.termination_reason not in _STOPPED_WITH_RUN
    )


def _first_failure(nodes: Sequence[JobRow]) -> JobRow | None:
    failed = [n for n in nodes if _failed(n)]
    return min(failed, key=lambda n: (n.finished_at or 0.0, n.job_num)) if failed else None


def _cause(nodes: Sequence[JobRow], asking: JobRow | None) -> str | None:
    """Why the run stops its nodes: the first node that failed, or the master done (master-done)."""
    failure = _first_failure([n for n in nodes if n is not asking])
    if failure is not None:
        return f"{node_label(failure)} failed: {failure.termination_message or failure.status}"
    master = next((n for n in nodes if n.job_num == 0), None)
    if master is not None and master.status == RunStatus.DONE.value:
        return "the master node is done (stop_criteria: master-done)"
    return None


def _outcome(
    nodes: Sequence[JobRow], stop_requested: str | None
) -> tuple[RunStatus, TerminationReason | None, str | None, int | None]:
    failure = _first_failure(nodes)
    if failure is not None:
        reason = TerminationReason(failure.termination_reason) if failure.termination_reason else None
        text = failure.termination_message or (
            reason.describe(failure.exit_code) if reason else failure.status
        )
        return RunStatus(failure.status), reason, f"{node_label(failure)}: {text}", failure.exit_code
    if stop_requested == ABORT:
        return RunStatus.ABORTED, TerminationReason.ABORTED_BY_USER, None, None
    if stop_requested == STOP:
        return RunStatus.TERMINATED, TerminationReason.STOPPED_BY_USER, None, None
    return RunStatus.DONE, None, None, 0


def _job_stage(job: JobRow) -> RunStatus | None:
    status = RunStatus(job.status)
    return None if status.is_finished else status


def _least_advanced(stages: Sequence[RunStatus | None]) -> RunStatus | None:
    present = [s for s in stages if s is not None]
    return min(present, key=_PROGRESS.index) if present else None


def _next_start(
    run: RunRow, jobs: Sequence[JobRow], status: RunStatus, reason: TerminationReason | None
) -> list[JobRow]:
    """A scheduled run waits for its next start with a new job per node (a stop by its user ends it)."""
    if not run.schedule or reason in _FINAL_FOR_SCHEDULED:
        return []
    now = time.time()
    upcoming = next_start(json.loads(run.schedule), now)
    if upcoming is None:
        return []
    window = (
        run.retry_deadline - run.next_start_at
        if run.retry_deadline is not None and run.next_start_at is not None
        else None
    )
    ranks = sorted({job.job_num for job in jobs}) or [0]
    submission = max((job.submission_num for job in jobs), default=-1) + 1
    following = [
        JobRow(
            id=str(uuid.uuid4()),
            run_id=run.id,
            submission_num=submission,
            job_num=rank,
            status=RunStatus.PENDING.value,
            submitted_at=now,
        )
        for rank in ranks
    ]
    run.next_start_at = upcoming
    run.retry_deadline = upcoming + window if window is not None else None
    for job in following:
        apply_status(run, job, RunStatus.PENDING, status_message=scheduled_message(upcoming, status))
    return following


def scheduled_message(upcoming: float, last: RunStatus | None = None) -> str:
    text = f"Scheduled: next start {format_utc(upcoming)}"
    return f"{text} (last run: {last.value})" if last is not None else text
