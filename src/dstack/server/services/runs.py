"""Runs: submit, list, get, stop, plan. Routers stay thin; the rules live here."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Select, Table, bindparam, or_, select

from dstack.config.cron import next_start
from dstack.core.statuses import (
    FINISHED_STATUSES,
    WAITING_STATUSES,
    RunStatus,
    TerminationReason,
)
from dstack.server.context import ServerContext
from dstack.server.db.engine import insert_at_commit
from dstack.server.db.models import CodeRow, JobRow, RunRow, TransitionRow
from dstack.server.events import SCHEDULE, SUBMITTED, SUPERVISE, run_channel, stop_channel
from dstack.server.schemas import RunSpec
from dstack.server.services import retention, secrets, specs
from dstack.server.services.errors import Conflict, NotFound, ServiceError
from dstack.server.services.projects import Project
from dstack.server.services.transitions import (
    ABORT,
    STOP,
    apply_status,
    end_run,
    scheduled_message,
    status_values,
    submitted_entry,
)
from dstack.server.services.users import User

PS_DEFAULT_LIMIT = 50
PS_MAX_LIMIT = 1000
Cursor = tuple[float, str]  # (submitted_at, id) of a listed run
_FINISHED = [s.value for s in FINISHED_STATUSES]
_WAITING = [s.value for s in WAITING_STATUSES]


async def missing_secrets(ctx: ServerContext, project: Project, checked: specs.CheckedSpec) -> str | None:
    names = checked.secret_names
    if not names:
        return None
    found = await secrets.values_of(ctx, project.id, names)
    missing = names - set(found)
    return secrets.missing_message(missing, project.name) if missing else None


async def submit(ctx: ServerContext, project: Project, user: User, spec: RunSpec) -> dict[str, Any]:
    checked = specs.check(spec)
    specs.check_size(spec)
    refusal = checked.refusal or await missing_secrets(ctx, project, checked)
    if refusal is not None:
        raise ServiceError(refusal)
    now = time.time()
    schedule = checked.schedule
    first_start = next_start(schedule, now) if schedule else None
    # The retry window opens when the run may start: at submission, or at each scheduled start.
    opens = first_start if first_start is not None else now

    async def record(session: Any) -> tuple[RunRow, JobRow]:
        if spec.code_hash is not None:
            code = await session.get(CodeRow, (project.id, spec.code_hash))
            if code is None:
                raise ServiceError(
                    f"Code {spec.code_hash[:12]} has not been uploaded; upload it before submitting"
                )
        name = await _claim_name(ctx, session, project, spec.run_name)
        stored = spec.model_copy(update={"run_name": name})
        run = RunRow(
            id=str(uuid.uuid4()),
            project_id=project.id,
            user_id=user.record_id,
            name=name,
            submitted_at=now,
            status=RunStatus.SUBMITTED.value,
            spec=stored.model_dump_json(),
            configuration_path=spec.configuration_path[:256] or None,
            retry_deadline=opens + checked.retry_seconds if checked.retry_seconds is not None else None,
            priority=checked.priority,
            schedule=json.dumps(schedule) if schedule else None,
            next_start_at=first_start,
            nodes=checked.nodes,
        )
        # One job per node (job_num = its rank; 0 is the master), placed together by the scheduler.
        jobs = [
            JobRow(
                id=str(uuid.uuid4()),
                run_id=run.id,
                submission_num=0,
                job_num=rank,
                status=RunStatus.SUBMITTED.value,
                submitted_at=now,
            )
            for rank in range(checked.nodes)
        ]
        history = [submitted_entry(run)]  # its history's start
        if first_start is not None:
            # Waiting for its first start from the moment it exists (`dstack ps` right after `dstack run`).
            run_values, job_values = status_values(
                RunStatus.PENDING, status_message=scheduled_message(first_start), now=now
            )
            for row, values in ((run, run_values), *((job, job_values) for job in jobs)):
                for column, value in values.items():
                    setattr(row, column, value)
            history.append(submitted_entry(run))
        # Plain INSERTs, not the ORM's unit of work, and one of each per batch of submissions (a burst
        # spends its time here). The rows stay unattached, for the answer only.
        insert_at_commit(session, _table(RunRow), [_columns(run, RunRow)])
        insert_at_commit(session, _table(JobRow), [_columns(job, JobRow) for job in jobs])
        insert_at_commit(session, _table(TransitionRow), history)
        return run, jobs[0]

    # Submissions arriving together share one transaction (see Database.write_batched).
    run, job = await ctx.db.write_batched(record)
    stored = dataclasses.replace(checked, spec=checked.spec.model_copy(update={"run_name": run.name}))
    specs.remember(run.id, run.spec, stored)
    ctx.notifier.notify(run_channel(run.id))  # watchers of the run list see it at once
    ctx.notifier.notify(SUBMITTED)
    ctx.notifier.notify(SCHEDULE)
    return run_json(run, job, project.name, user.name)


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


def _columns(row: Any, table: Any) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in table.__table__.columns}


async def free_name(session: Any, project: Project) -> str:
    """A random name no run of the project has (the CLI interpolates ${{ run.name }} with it)."""
    from dstack.config.names import random_run_name

    for _ in range(100):
        candidate = random_run_name()
        taken = await session.execute(
            select(RunRow.id).where(RunRow.project_id == project.id, RunRow.name == candidate)
        )
        if taken.first() is None:
            return candidate
    raise ServiceError("Could not find a free run name; pass one with -n")


async def _claim_name(ctx: ServerContext, session: Any, project: Project, wanted: str | None) -> str:
    if wanted is None:
        return await free_name(session, project)
    # Only what the check needs: a whole row would carry its (big) spec along, on every submission.
    existing = (
        await session.execute(
            select(RunRow.id, RunRow.status).where(RunRow.project_id == project.id, RunRow.name == wanted)
        )
    ).first()
    if existing is not None:
        if existing.status not in _FINISHED:
            raise Conflict(
                f"Run {wanted} is {existing.status}; "
                f"stop it first (dstack stop {wanted}) or choose another name"
            )
        if existing.id in ctx.readers:
            raise Conflict(f"Run {wanted} is being read by a client; choose another name, or try again")
        # A finished run's name is reused by the new run: the old one (and its logs) is replaced.
        await retention.delete_runs(ctx, session, [existing.id])
    return wanted


async def delete(
    ctx: ServerContext, project: Project, names: list[str], *, finished: bool = False
) -> list[str]:
    """Delete finished runs with their output: the named ones, or with `finished` all of the project's.

    A named run that is not finished, or that a client is reading, is refused (and nothing is deleted);
    `finished` passes over such runs."""
    async with ctx.db.write() as session:
        if finished:
            rows = (
                await session.execute(
                    select(RunRow.id, RunRow.name).where(
                        RunRow.project_id == project.id, RunRow.status.in_(_FINISHED)
                    )
                )
            ).all()
            chosen = [(run_id, name) for run_id, name in rows if run_id not in ctx.readers]
        else:
            chosen = []
            for name in dict.fromkeys(names):
                run, _ = await find(session, project, name)
                if not RunStatus(run.status).is_finished:
                    raise Conflict(f"Run {name} is {run.status}; stop it first (dstack stop {name})")
                if run.id in ctx.readers:
                    raise Conflict(f"Run {name} is being read by a client; try again once it is not")
                chosen.append((run.id, name))
        await retention.delete_runs(ctx, session, [run_id for run_id, _ in chosen])
    return [name for _, name in chosen]


_UNFINISHED = [s.value for s in RunStatus if not s.is_finished]
# What `ps` shows: everything but the spec, which is big and would have to be parsed.
_LISTED = [c for c in RunRow.__table__.columns if c.name != "spec"]


async def list_runs(
    ctx: ServerContext,
    project: Project,
    *,
    all_runs: bool,
    limit: int | None = None,
    before: Cursor | None = None,
    after: Cursor | None = None,
) -> list[dict[str, Any]]:
    """Newest first. Without `all_runs`: the unfinished runs, or the latest finished one if none is active.

    With `all_runs`, a page of a keyset walk over the (project, submitted) index: `before` the runs older
    than a cursor, `after` the ones newer than it (still newest first). Nothing is counted, so a page costs
    the same with 100 runs or 100,000.
    """
    limit = min(limit or (PS_MAX_LIMIT if all_runs else PS_DEFAULT_LIMIT), PS_MAX_LIMIT)
    mine = select(*_LISTED).where(RunRow.project_id == project.id)
    newest = mine.order_by(RunRow.submitted_at.desc(), RunRow.id.desc())
    async with ctx.db.read() as session:
        if all_runs and after is not None:
            at, run_id = after
            # The range term alone lets the index seek; the OR only breaks ties within one instant.
            newer = mine.where(
                RunRow.submitted_at >= at, or_(RunRow.submitted_at > at, RunRow.id > run_id)
            ).order_by(RunRow.submitted_at, RunRow.id)
            rows: Sequence[Any] = list(reversed((await session.execute(newer.limit(limit))).mappings().all()))
        elif all_runs:
            query = newest
            if before is not None:
                at, run_id = before
                query = query.where(
                    RunRow.submitted_at <= at, or_(RunRow.submitted_at < at, RunRow.id < run_id)
                )
            rows = (await session.execute(query.limit(limit))).mappings().all()
        else:
            # The few unfinished runs through the status index. Left to itself, SQLite walks the
            # (project, submitted) index newest first instead, reading every finished run of the project
            # (70 ms at 100,000 runs); as expressions, project and time cannot use an index, so the
            # status index is the one left. Portable: PostgreSQL reads the same query fine.
            unfinished = (
                select(*_LISTED)
                .where((RunRow.project_id + "") == project.id, RunRow.status.in_(_UNFINISHED))
                .order_by((RunRow.submitted_at + 0).desc())
                .limit(limit)
            )
            rows = (await session.execute(unfinished)).mappings().all()
            if not rows:
                rows = (await session.execute(newest.limit(1))).mappings().all()
        nodes = await _nodes_by_run(session, [row["id"] for row in rows if (row["nodes"] or 1) > 1])
    return [_listed_json(row, project.name, nodes.get(row["id"])) for row in rows]


async def _nodes_by_run(session: Any, run_ids: list[str]) -> dict[str, list[JobRow]]:
    """The current submission's jobs of each multi-node run (one query for a page of runs)."""
    if not run_ids:
        return {}
    found: dict[str, list[JobRow]] = {}
    rows = await session.execute(
        select(JobRow)
        .where(JobRow.run_id.in_(run_ids))
        .order_by(JobRow.submission_num.desc(), JobRow.job_num)
    )
    for job in rows.scalars():
        jobs = found.setdefault(job.run_id, [])
        if not jobs or jobs[0].submission_num == job.submission_num:
            jobs.append(job)
    return found


def parse_cursor(text: str) -> Cursor:
    """A page cursor: "SUBMITTED_AT:RUN_ID" of the last run of the page before (see `list_runs`)."""
    at, sep, run_id = text.partition(":")
    try:
        value = float(at)
    except ValueError:
        value = float("nan")
    if not sep or not run_id or value != value:
        raise ServiceError(f"The page cursor {text[:80]!r} is not valid; pass SUBMITTED_AT:RUN_ID of a run")
    return value, run_id


def _listed_json(row: Any, project: str, nodes: list[JobRow] | None) -> dict[str, Any]:
    data = {
        "id": row["id"],
        "name": row["name"],
        "project": project,
        "user": None,
        "status": row["status"],
        "status_message": row["status_message"],
        "submitted_at": row["submitted_at"],
        "finished_at": row["finished_at"],
        "termination_reason": row["termination_reason"],
        "termination_message": row["termination_message"],
        "exit_code": row["exit_code"],
        "backend": row["backend"],
        "resources": row["resources"],
        "price": row["price"],
        "configuration_path": row["configuration_path"],
        "priority": row["priority"],
        "next_start_at": row["next_start_at"] if row["schedule"] else None,
        "instance": row["instance"],
    }
    if nodes:
        data["nodes"] = [node_json(job) for job in nodes]
    return data


def node_json(job: JobRow) -> dict[str, Any]:
    """One node of a multi-node run (its job of the current submission), for `ps -v` and the run page."""
    return {
        "rank": job.job_num,
        "job_id": job.id,
        "status": job.status,
        "hostname": job.hostname,
        "address": job.address,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": job.exit_code,
        "termination_reason": job.termination_reason,
        "termination_message": job.termination_message,
    }


async def get(
    ctx: ServerContext, project: Project, name: str, node: int | None = None
) -> tuple[RunRow, JobRow | None]:
    async with ctx.db.read() as session:
        return await find(session, project, name, node)


# A run's current job (of a node): its latest submission's, the master's first.
_CURRENT_JOB_FIRST = (JobRow.submission_num.desc(), JobRow.job_num)


def _not_found(project: Project, name: str) -> NotFound:
    return NotFound(f"Run {name} not found in project {project.name}")


class Shown(NamedTuple):
    """What the attach stream shows of a run, read on each of its changes: its status, how it ended, and
    the id of its current job (whose output it streams)."""

    id: str
    name: str
    nodes: int
    status: str
    status_message: str | None
    exit_code: int | None
    termination_reason: str | None
    termination_message: str | None
    job_id: str | None


async def shown(ctx: ServerContext, project: Project, name: str, node: int | None = None) -> Shown:
    """The run as `get` finds it (the same job), in one prebuilt statement of columns: `get` loads two ORM
    rows in two statements, which costs the attach stream's every status change ~1 ms more."""
    async with ctx.db.read() as session:
        row = (
            await session.execute(
                _shown_statement(bool(node)),
                {"project_id": project.id, "name": name, **({"node": node} if node else {})},
            )
        ).first()
    if row is None:
        raise _not_found(project, name)
    found = Shown(*row)
    if node:
        check_node(found, node)
    return found


@functools.lru_cache(maxsize=2)
def _shown_statement(of_node: bool) -> Select[Any]:
    job = select(JobRow.id).where(JobRow.run_id == RunRow.id)
    if of_node:
        job = job.where(JobRow.job_num == bindparam("node"))
    current = job.order_by(*_CURRENT_JOB_FIRST).limit(1).correlate(RunRow)
    return select(
        RunRow.id,
        RunRow.name,
        RunRow.nodes,
        RunRow.status,
        RunRow.status_message,
        RunRow.exit_code,
        RunRow.termination_reason,
        RunRow.termination_message,
        current.scalar_subquery(),
    ).where(RunRow.project_id == bindparam("project_id"), RunRow.name == bindparam("name"))


async def describe(ctx: ServerContext, project: Project, name: str) -> dict[str, Any]:
    """`GET /runs/NAME`: the run, its current job (the master's) and, for a multi-node run, its nodes."""
    async with ctx.db.read() as session:
        run, job = await find(session, project, name)
        nodes = await nodes_of(session, run, job) if run.nodes > 1 else []
    data = run_json(run, job, project.name, None)
    if nodes:
        data["nodes"] = [node_json(node) for node in nodes]
    return data


async def find(
    session: Any, project: Project, name: str, node: int | None = None
) -> tuple[RunRow, JobRow | None]:
    """The run and its current job: the master's (rank 0), or node `node`'s."""
    run = (
        await session.execute(select(RunRow).where(RunRow.project_id == project.id, RunRow.name == name))
    ).scalar_one_or_none()
    if run is None:
        raise _not_found(project, name)
    query = select(JobRow).where(JobRow.run_id == run.id)
    if node:
        check_node(run, node)
        query = query.where(JobRow.job_num == node)
    job = (await session.execute(query.order_by(*_CURRENT_JOB_FIRST).limit(1))).scalar_one_or_none()
    return run, job


async def nodes_of(session: Any, run: RunRow, job: JobRow | None) -> list[JobRow]:
    """Every job of the submission `job` belongs to (one per node, master first); [job] for a single-node
    run, without a query."""
    if job is None:
        return []
    if run.nodes <= 1:
        return [job]
    return list(
        (
            await session.execute(
                select(JobRow)
                .where(JobRow.run_id == run.id, JobRow.submission_num == job.submission_num)
                .order_by(JobRow.job_num)
            )
        ).scalars()
    )


async def stop(
    ctx: ServerContext, project: Project, names: list[str], *, abort: bool
) -> list[dict[str, Any]]:
    """Waiting runs end at once; placed runs go to `terminating` and their supervisor stops the job."""
    result = []
    touched = []
    async with ctx.db.write() as session:
        for name in names:
            run, job = await find(session, project, name)
            status = RunStatus(run.status)
            if status.is_finished:
                pass
            elif status in WAITING_STATUSES and (job is None or job.host_id is None):
                end_run(
                    run,
                    await nodes_of(session, run, job),
                    RunStatus.ABORTED if abort else RunStatus.TERMINATED,
                    reason=TerminationReason.ABORTED_BY_USER if abort else TerminationReason.STOPPED_BY_USER,
                )
            else:
                # An abort may follow a graceful stop (or a node's end); never downgrade an abort to a stop.
                if abort or run.stop_requested != ABORT:
                    run.stop_requested = ABORT if abort else STOP
                for node in await nodes_of(session, run, job):
                    if not RunStatus(node.status).is_finished:
                        apply_status(run, node, RunStatus.TERMINATING)
                apply_status(run, None, RunStatus.TERMINATING)
            touched.append(run.id)
            result.append(run_json(run, job, project.name, None))
    for run_id in touched:
        ctx.notifier.notify(run_channel(run_id))
        ctx.notifier.notify(stop_channel(run_id))
    ctx.notifier.notify(SUPERVISE)
    ctx.notifier.notify(SCHEDULE)
    return result


def _shown_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The stored spec as users see it: a password written into registry_auth is not shown back.

    (`${{ secrets.X }}` references are shown as written: their values are only ever resolved for the agent.)
    """
    auth = (spec.get("configuration") or {}).get("registry_auth")
    if isinstance(auth, dict) and auth.get("password") and "${{" not in str(auth["password"]):
        spec = json.loads(json.dumps(spec))
        spec["configuration"]["registry_auth"]["password"] = "***"  # noqa: S105 (a mask, not a password)
    return spec


async def job_by_id(ctx: ServerContext, job_id: str) -> JobRow | None:
    async with ctx.db.read() as session:
        return await session.get(JobRow, job_id)


async def output_job(
    ctx: ServerContext, project: Project, name: str, node: int | None = None
) -> tuple[RunRow, JobRow | None]:
    """The run and the job whose output to show: the latest that was placed (a scheduled run's newest job
    waits for its start with no output yet), of the master node or of node `node` (its rank)."""
    async with ctx.db.read() as session:
        run, job = await find(session, project, name, node)
        if job is None or job.status not in _WAITING or job.submission_num == 0:
            return run, job
        placed = (
            await session.execute(
                select(JobRow)
                .where(JobRow.run_id == run.id, JobRow.job_num == job.job_num, JobRow.status.not_in(_WAITING))
                .order_by(JobRow.submission_num.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        return run, placed or job


def check_node(run: RunRow | Shown, node: int) -> None:
    if not 0 <= node < run.nodes:
        nodes = "one node (0)" if run.nodes == 1 else f"{run.nodes} nodes (0-{run.nodes - 1})"
        raise ServiceError(f"Run {run.name} has {nodes}; there is no node {node}")


def run_json(
    run: RunRow, job: JobRow | None, project: str, user: str | None, *, with_spec: bool = True
) -> dict[str, Any]:
    spec = json.loads(run.spec)
    data: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "project": project,
        "user": user,
        "status": run.status,
        "status_message": run.status_message,
        "submitted_at": run.submitted_at,
        "finished_at": run.finished_at,
        "termination_reason": run.termination_reason,
        "termination_message": run.termination_message,
        "exit_code": run.exit_code,
        "backend": run.backend,
        "resources": run.resources,
        "price": run.price,
        "configuration_path": run.configuration_path or spec.get("configuration_path"),
        "priority": run.priority,
        "next_start_at": run.next_start_at if run.schedule else None,
        "instance": run.instance,
    }
    if with_spec:
        data["spec"] = _shown_spec(spec)
    if job is not None:
        data["job"] = {
            "id": job.id,
            "status": job.status,
            "submission_num": job.submission_num,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "allocation": json.loads(job.allocation) if job.allocation else None,
        }
    return data
