"""The scheduling loop: places waiting runs on hosts, highest `priority` first, then first come first served.

It is woken by events (a submission, a job ending, a stop) rather than a timer; the poll interval is only
a safety net and how another replica's changes are noticed, and a retry deadline wakes it on time. One
pass is one write transaction that first locks the "scheduler" row, so the allocations it reads are the
ones it updates: two passes, in this process or in another replica, can never hand out the same GPU or
port.

What a run that does not fit now becomes (SPEC §8, the tasks guide's "Configure a retry limit"):
- no host can ever fit it: without retry it fails with `no capacity` and the sentence saying what was
  asked and what the hosts have; with retry it waits in `pending` (a host may be added) until its window,
  measured from its submission, closes: then `retry limit exceeded`;
- it fits a host that is busy now: with retry it waits in `pending` and starts as soon as capacity frees,
  in submission order; without retry it fails with `no capacity` at once, as dstack does when no offer is
  available - a run never waits unless its user asked it to (the CLI says so before submitting).

Order: waiting runs are considered by `priority` (0-100, highest first), then by submission; a run queued
for a busy host keeps later runs of lower or equal priority off it (so a big task is not starved).
A run with a `schedule` waits in `pending` until its next start (it promises no host meanwhile); when
its job ends it waits for the next start again (`transitions.end_job`), until its user stops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from dstack.core.statuses import WAITING_STATUSES, RunStatus, TerminationReason
from dstack.server.backends.base import CAP_QUEUE
from dstack.server.context import ServerContext
from dstack.server.db.models import JobRow, LockRow, RunRow
from dstack.server.events import SCHEDULE, SUPERVISE, run_channel
from dstack.server.scheduler import placement
from dstack.server.scheduler.placement import HostUsage
from dstack.server.schemas import RunSpec
from dstack.server.services import specs
from dstack.server.services.errors import ServiceError
from dstack.server.services.transitions import apply_status, end_job, scheduled_message
from dstack.server.services.usage import load_usages

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "scheduler"

BATCH = 1000
COALESCE_SECONDS = 0.02
_WAITING = [s.value for s in WAITING_STATUSES]
RETRY_ADVICE = "submit with --retry-limit (or retry: in the configuration) to wait for capacity"


class SchedulingLoop:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._checked: dict[str, specs.CheckedSpec] = {}  # run id -> parsed spec; specs never change
        self._following: list[JobRow] = []  # next jobs of scheduled runs that ended in this pass

    async def run_forever(self) -> None:
        signal = self.ctx.notifier.signal(SCHEDULE)
        while True:
            version = signal.version
            try:
                next_deadline = await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed")
                next_deadline = None
            timeout = self.ctx.settings.poll_seconds
            if next_deadline is not None:
                timeout = max(0.0, min(timeout, next_deadline - time.time()))
            if await signal.wait(version, timeout):
                # Woken by an event: let the ones right behind it (a burst of submissions, of job ends)
                # land too, so that one pass places them all. Far below the second a run may wait.
                await asyncio.sleep(COALESCE_SECONDS)

    async def pass_once(self) -> float | None:
        """Place what fits; returns the earliest retry deadline among runs left waiting."""
        async with self.ctx.db.read() as session:
            anything = await session.execute(select(JobRow.id).where(JobRow.status.in_(_WAITING)).limit(1))
            if anything.first() is None:
                self._checked.clear()
                return None
        hosts = await self.ctx.backends.hosts()
        now = time.time()
        changed: list[str] = []
        placed = False
        earliest: float | None = None
        async with self.ctx.db.write() as session:
            # Held to the commit: a replica sharing the database waits here rather than placing runs on the
            # same free capacity at the same time.
            await session.execute(
                select(LockRow.name).where(LockRow.name == SCHEDULER_LOCK).with_for_update()
            )
            rows = (
                await session.execute(
                    select(RunRow, JobRow)
                    .join(JobRow, JobRow.run_id == RunRow.id)
                    .where(JobRow.status.in_(_WAITING))
                    .order_by(RunRow.priority.desc(), RunRow.submitted_at, RunRow.id)
                    .limit(BATCH)
                    # Specs are big and parsed once per process (see _checked): load only the ones needed.
                    .options(defer(RunRow.spec))
                )
            ).all()
            await self._load_specs(session, [run.id for run, _ in rows])
            usages = await load_usages(session, hosts)
            blocked: dict[str, str] = {}
            for run, job in rows:
                before = (run.status, run.status_message)
                if run.next_start_at is not None and run.next_start_at > now:
                    self._wait_for_start(run, job)
                    earliest = min(earliest or run.next_start_at, run.next_start_at)
                elif self._place(run, job, usages, blocked, now):
                    placed = True
                elif not RunStatus(run.status).is_finished and run.retry_deadline is not None:
                    earliest = min(earliest or run.retry_deadline, run.retry_deadline)
                if (run.status, run.status_message) != before:
                    changed.append(run.id)
            session.add_all(self._following)
            for following in self._following:
                if following.run_id not in changed:
                    changed.append(following.run_id)
            self._following = []
        for run_id in changed:
            self.ctx.notifier.notify(run_channel(run_id))
        if placed:
            self.ctx.notifier.notify(SUPERVISE)
        return earliest

    async def _load_specs(self, session: AsyncSession, run_ids: list[str]) -> None:
        missing = []
        for run_id in run_ids:
            if run_id not in self._checked:
                recalled = specs.recall(run_id)  # checked at submission by this process
                if recalled is not None:
                    self._checked[run_id] = recalled
                else:
                    missing.append(run_id)
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            result = await session.execute(select(RunRow.id, RunRow.spec).where(RunRow.id.in_(chunk)))
            for run_id, spec in result:
                try:
                    self._checked[run_id] = specs.check(RunSpec.model_validate_json(spec))
                except (ServiceError, ValueError) as e:
                    log.warning("run %s has a spec this server cannot read: %s", run_id, e)

    def _place(
        self, run: RunRow, job: JobRow, usages: list[HostUsage], blocked: dict[str, str], now: float
    ) -> bool:
        checked = self._checked.get(run.id)
        if checked is None:
            self._fail(run, job, TerminationReason.SERVER_ERROR, "the run's spec could not be read")
            return False
        req = checked.requirements
        usages = placement.for_project(usages, run.project_id)  # (the lists share their HostUsages)
        decision = placement.decide(req, usages, job.id, blocked)
        if decision.allocation is not None and decision.host is not None:
            host = decision.host
            job.host_id = host.id
            job.allocation = json.dumps(decision.allocation.to_json())
            run.backend = host.backend
            run.resources = placement.describe_allocation(host, decision.allocation)
            run.price = host.price
            apply_status(run, job, RunStatus.PROVISIONING)
            usage = next(u for u in usages if u.host.id == host.id)
            usage.allocations.append(dataclasses.replace(decision.allocation, run_name=run.name))
            self._checked.pop(run.id, None)
            return True
        expired = run.retry_deadline is not None and now >= run.retry_deadline
        if decision.wait_reason is not None:
            if run.retry_deadline is None:
                self._fail(
                    run,
                    job,
                    TerminationReason.NO_CAPACITY,
                    f"No offer is free now: {decision.wait_reason}; {RETRY_ADVICE}.",
                )
                return False
            if expired:
                self._fail(
                    run,
                    job,
                    TerminationReason.RETRY_LIMIT_EXCEEDED,
                    f"retry limit exceeded while waiting for capacity: {decision.wait_reason}",
                )
                return False
            # It queues for the hosts it fits; later runs may not jump ahead of it there (a queue host has
            # a queue of its own and is never held for anyone).
            for usage in usages:
                if CAP_QUEUE not in usage.host.capabilities and not placement.misses(req, usage.host):
                    blocked.setdefault(usage.host.id, run.name)
            apply_status(
                run, job, RunStatus.PENDING, status_message=f"Waiting for capacity: {decision.wait_reason}"
            )
            return False
        reason = decision.impossible_reason or "No offer fits."
        if run.retry_deadline is None:
            self._fail(run, job, TerminationReason.NO_CAPACITY, reason)
        elif expired:
            self._fail(run, job, TerminationReason.RETRY_LIMIT_EXCEEDED, f"retry limit exceeded: {reason}")
        else:
            apply_status(run, job, RunStatus.PENDING, status_message=f"Waiting for capacity: {reason}")
        return False

    def _wait_for_start(self, run: RunRow, job: JobRow) -> None:
        assert run.next_start_at is not None
        message = run.status_message
        if run.status != RunStatus.PENDING.value or not (message or "").startswith("Scheduled:"):
            apply_status(run, job, RunStatus.PENDING, status_message=scheduled_message(run.next_start_at))

    def _fail(self, run: RunRow, job: JobRow, reason: TerminationReason, message: str) -> None:
        following = end_job(run, job, RunStatus.FAILED, reason=reason, message=message)
        if following is not None:
            self._following.append(following)
        else:
            self._checked.pop(run.id, None)
