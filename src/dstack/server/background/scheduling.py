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
A multi-node run is placed whole (scheduler/gang.py): every node on its own host of one cluster in the same
pass, or none; it waits, fails or keeps later runs off its hosts as one run.
A run with a `schedule` waits in `pending` until its next start (it promises no host meanwhile); when
its job ends it waits for the next start again (`transitions.end_job`), until its user stops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value

from dstack.core.statuses import WAITING_STATUSES, RunStatus, TerminationReason
from dstack.server.backends.base import CAP_QUEUE
from dstack.server.context import ServerContext
from dstack.server.db.models import JobRow, LockRow, RunRow
from dstack.server.events import SCHEDULE, SUBMITTED, SUPERVISE, run_channel
from dstack.server.scheduler import gang, placement
from dstack.server.scheduler.model import Allocation, Host
from dstack.server.scheduler.placement import HostUsage
from dstack.server.services import specs
from dstack.server.services.errors import ServiceError
from dstack.server.services.transitions import apply_status, end_run, scheduled_message
from dstack.server.services.usage import load_usages

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "scheduler"

BATCH = 1000
COALESCE_SECONDS = 0.02
_WAITING = [s.value for s in WAITING_STATUSES]
RETRY_ADVICE = "submit with --retry-limit (or retry: in the configuration) to wait for capacity"

# Starts a supervisor for each job leased to `token`: job id -> (its run's row, its row).
Supervise = Callable[[str, dict[str, tuple[RunRow, JobRow]]], None]


class SchedulingLoop:
    def __init__(self, ctx: ServerContext, supervise: Supervise | None = None) -> None:
        self.ctx = ctx
        self._supervise = supervise
        self._placed: list[tuple[RunRow, JobRow]] = []  # this pass's placements, to be claimed in it
        self._checked: dict[str, specs.CheckedSpec] = {}  # run id -> parsed spec; specs never change
        self._following: list[JobRow] = []  # next jobs of scheduled runs that ended in this pass
        self._submitted = ctx.notifier.signal(SUBMITTED)
        self._submitted_seen = -1

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
            ended = time.monotonic()
            if await signal.wait(version, timeout) and time.monotonic() - ended < COALESCE_SECONDS:
                # Woken by an event that came while the last pass ran or right after it: a burst (of
                # submissions, of job ends) is under way, so let the ones right behind it land too and
                # place them all in one pass. An event after a quiet moment is handled at once: a lone
                # `dstack run` does not wait for a burst that is not coming.
                await asyncio.sleep(COALESCE_SECONDS)

    async def pass_once(self) -> float | None:
        """Place what fits; returns the earliest retry deadline among runs left waiting."""
        submitted = self._submitted.version != self._submitted_seen
        self._submitted_seen = self._submitted.version
        if not submitted:
            # Woken by a job's end, a stop or the timer: often nothing waits, and a read says so for less
            # than the write transaction would cost. After a submission something does wait: no read (a hop
            # to a reader thread, which a lone `dstack run` would wait on).
            async with self.ctx.db.read() as session:
                anything = await session.execute(
                    select(JobRow.id).where(JobRow.status.in_(_WAITING)).limit(1)
                )
                if anything.first() is None:
                    self._checked.clear()
                    return None
        hosts = await self.ctx.backends.hosts()
        now = time.time()
        changed: list[str] = []
        earliest: float | None = None
        self._placed = []
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
                    .order_by(RunRow.priority.desc(), RunRow.submitted_at, RunRow.id, JobRow.job_num)
                    .limit(BATCH)
                    # Specs are big and parsed once per process (see _checked): load only the ones needed.
                    .options(defer(RunRow.spec))
                )
            ).all()
            waiting = _by_run(rows)
            if len(rows) == BATCH and waiting and len(waiting[-1][1]) < waiting[-1][0].nodes:
                waiting.pop()  # the batch cut that run's nodes short: the next pass takes it whole
            await self._load_specs(session, [run.id for run, _ in waiting])
            usages = await load_usages(session, hosts)
            blocked: dict[str, str] = {}
            for run, jobs in waiting:
                before = (run.status, run.status_message)
                if run.next_start_at is not None and run.next_start_at > now:
                    self._wait_for_start(run, jobs)
                    earliest = min(earliest or run.next_start_at, run.next_start_at)
                elif (
                    not self._place(run, jobs, usages, blocked, now)
                    and not RunStatus(run.status).is_finished
                    and run.retry_deadline is not None
                ):
                    earliest = min(earliest or run.retry_deadline, run.retry_deadline)
                if (run.status, run.status_message) != before:
                    changed.append(run.id)
            session.add_all(self._following)
            for following in self._following:
                if following.run_id not in changed:
                    changed.append(following.run_id)
            self._following = []
            token, claimed, unclaimed = self._claim_placed(now)
        for run_id in changed:
            self.ctx.notifier.notify(run_channel(run_id))
        if claimed and self._supervise is not None:
            self._supervise(token, claimed)
        if unclaimed:
            self.ctx.notifier.notify(SUPERVISE)  # the claim loop takes them
        return earliest

    def _claim_placed(self, now: float) -> tuple[str, dict[str, tuple[RunRow, JobRow]], int]:
        """Lease the jobs this pass placed to this process's supervisors, in the pass's own transaction: a
        lone `dstack run` then waits for one write transaction less (the claim loop's), and a burst's jobs
        reach their agents a claim earlier. A job whose run's spec text is not at hand (its supervisor
        reads it) is left to the claim loop, which loads its rows whole. Returns (the token, the jobs
        leased to it, how many placed jobs were not)."""
        placed, self._placed = self._placed, []
        token = str(uuid.uuid4())
        claimed: dict[str, tuple[RunRow, JobRow]] = {}
        if self._supervise is None:
            return token, claimed, len(placed)
        until = now + self.ctx.settings.lease_seconds
        for run, job in placed:
            text = specs.text_of(run.id)
            if text is None or (job.lock_expires_at is not None and job.lock_expires_at >= now):
                continue
            set_committed_value(run, "spec", text)  # read deferred, and it never changes
            job.lock_token, job.lock_expires_at = token, until
            claimed[job.id] = (run, job)
        return token, claimed, len(placed) - len(claimed)

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
                    self._checked[run_id] = specs.checked_of(run_id, spec)
                except (ServiceError, ValueError) as e:
                    log.warning("run %s has a spec this server cannot read: %s", run_id, e)

    def _place(
        self, run: RunRow, jobs: list[JobRow], usages: list[HostUsage], blocked: dict[str, str], now: float
    ) -> bool:
        checked = self._checked.get(run.id)
        if checked is None:
            self._fail(run, jobs, TerminationReason.SERVER_ERROR, "the run's spec could not be read")
            return False
        usages = placement.for_project(usages, run.project_id)  # (the lists share their HostUsages)
        placements, wait_reason, impossible_reason, waits_for = self._decide(checked, jobs, usages, blocked)
        if placements:
            for job, (host, allocation) in zip(jobs, placements, strict=True):
                job.host_id = host.id
                job.allocation = json.dumps(allocation.to_json())
                if CAP_QUEUE not in host.capabilities:  # a queue's node is known once it starts
                    job.hostname, job.address = host.name, host.address
                usage = next(u for u in usages if u.host.id == host.id)
                usage.allocations.append(dataclasses.replace(allocation, run_name=run.name))
            master, held = placements[0]
            run.backend = master.backend
            run.resources = placement.describe_allocation(master, held)
            if len(placements) > 1:
                run.resources = f"{len(placements)} nodes, each {run.resources}"
            run.price = sum(host.price for host, _ in placements)
            for job in jobs:
                apply_status(run, job, RunStatus.PROVISIONING)
                self._placed.append((run, job))
            self._checked.pop(run.id, None)
            return True
        expired = run.retry_deadline is not None and now >= run.retry_deadline
        if wait_reason is not None:
            if run.retry_deadline is None:
                self._fail(
                    run,
                    jobs,
                    TerminationReason.NO_CAPACITY,
                    f"No offer is free now: {wait_reason}; {RETRY_ADVICE}.",
                )
                return False
            if expired:
                self._fail(
                    run,
                    jobs,
                    TerminationReason.RETRY_LIMIT_EXCEEDED,
                    f"retry limit exceeded while waiting for capacity: {wait_reason}",
                )
                return False
            # It queues for the hosts it fits; later runs may not jump ahead of it there (a queue host has
            # a queue of its own and is never held for anyone).
            for host_id in waits_for:
                blocked.setdefault(host_id, run.name)
            self._wait(run, jobs, f"Waiting for capacity: {wait_reason}")
            return False
        reason = impossible_reason or "No offer fits."
        if run.retry_deadline is None:
            self._fail(run, jobs, TerminationReason.NO_CAPACITY, reason)
        elif expired:
            self._fail(run, jobs, TerminationReason.RETRY_LIMIT_EXCEEDED, f"retry limit exceeded: {reason}")
        else:
            self._wait(run, jobs, f"Waiting for capacity: {reason}")
        return False

    @staticmethod
    def _decide(
        checked: specs.CheckedSpec, jobs: list[JobRow], usages: list[HostUsage], blocked: dict[str, str]
    ) -> tuple[list[tuple[Host, Allocation]], str | None, str | None, list[str]]:
        """(placements in rank order, why it waits, why it never fits, the hosts it waits for)."""
        if checked.nodes > 1:
            gang_decision = gang.decide_gang(checked.node_requirements, usages, [j.id for j in jobs], blocked)
            return (
                list(gang_decision.placements),
                gang_decision.wait_reason,
                gang_decision.impossible_reason,
                list(gang_decision.waits_for),
            )
        req = checked.requirements
        decision = placement.decide(req, usages, jobs[0].id, blocked)
        if decision.allocation is not None and decision.host is not None:
            return [(decision.host, decision.allocation)], None, None, []
        waits_for = [
            u.host.id
            for u in usages
            if CAP_QUEUE not in u.host.capabilities and not placement.misses(req, u.host)
        ]
        return [], decision.wait_reason, decision.impossible_reason, waits_for

    def _wait(self, run: RunRow, jobs: list[JobRow], message: str) -> None:
        for job in jobs:
            apply_status(run, job, RunStatus.PENDING, status_message=message)

    def _wait_for_start(self, run: RunRow, jobs: list[JobRow]) -> None:
        assert run.next_start_at is not None
        message = run.status_message
        if run.status != RunStatus.PENDING.value or not (message or "").startswith("Scheduled:"):
            self._wait(run, jobs, scheduled_message(run.next_start_at))

    def _fail(self, run: RunRow, jobs: list[JobRow], reason: TerminationReason, message: str) -> None:
        following = end_run(run, jobs, RunStatus.FAILED, reason=reason, message=message)
        if following:
            self._following.extend(following)
        else:
            self._checked.pop(run.id, None)


def _by_run(rows: Sequence[Any]) -> list[tuple[RunRow, list[JobRow]]]:
    """The waiting jobs of each run (rows come ordered by run, then node rank)."""
    found: list[tuple[RunRow, list[JobRow]]] = []
    for run, job in rows:
        if found and found[-1][0].id == run.id:
            found[-1][1].append(job)
        else:
            found.append((run, [job]))
    return found
