"""Background processing: the scheduling loop, plus a claim loop that gives every placed job a supervisor
(the scheduling pass leases the jobs it places itself, in its own transaction, and hands them over here;
the claim loop takes the others: placed by another replica, or left by a crashed worker).

A job is claimed with a row lease (lock_token, lock_expires_at) by compare-and-set, so two workers - or two
server replicas on PostgreSQL - never supervise one job at once; a crashed worker's jobs are claimed again
once their lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid

from dstack.server.background import leases
from dstack.server.background.leases import LeaseKeeper
from dstack.server.background.reconcile import Reconciler
from dstack.server.background.scheduling import SchedulingLoop
from dstack.server.background.supervisor import Supervisor
from dstack.server.context import ServerContext
from dstack.server.db.models import JobRow, RunRow
from dstack.server.events import SUPERVISE
from dstack.server.services import retention

log = logging.getLogger(__name__)


class BackgroundWorkers:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.scheduling = SchedulingLoop(ctx, supervise=self._supervise)
        self.leases = LeaseKeeper(ctx)
        self.reconciler = Reconciler(ctx)
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.ctx.db.is_sqlite:
            # SQLite belongs to this one process: leases left by a previous (dead) process are void.
            await leases.release_all(self.ctx.db)
        self._loops = [
            asyncio.create_task(self.scheduling.run_forever(), name="scheduling"),
            asyncio.create_task(self._claim_forever(), name="claims"),
            asyncio.create_task(self.leases.run_forever(), name="leases"),
            asyncio.create_task(retention.run_forever(self.ctx), name="retention"),
            asyncio.create_task(self.reconciler.run_forever(), name="reconcile"),
        ]

    async def stop(self) -> None:
        tasks = self._loops + list(self._supervisors.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _claim_forever(self) -> None:
        signal = self.ctx.notifier.signal(SUPERVISE)
        while True:
            version = signal.version
            try:
                await self.claim_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("claiming jobs failed")
            await signal.wait(version, self.ctx.settings.poll_seconds)

    async def claim_once(self) -> None:
        token = str(uuid.uuid4())
        claimed = await leases.claim_claimable(
            self.ctx.db, self._supervisors, token, time.time(), self.ctx.settings.lease_seconds
        )
        self._supervise(token, claimed)

    def _supervise(self, token: str, claimed: dict[str, tuple[RunRow, JobRow]]) -> None:
        """A supervisor for each job leased to `token` (by the claim loop, or by the scheduling pass that
        placed it)."""
        for job_id, rows in claimed.items():
            supervisor = Supervisor(self.ctx, job_id, token, self.leases, rows)
            task = asyncio.create_task(supervisor.run(), name=f"job {job_id}")
            self._supervisors[job_id] = task
            task.add_done_callback(functools.partial(self._forget, job_id))

    def _forget(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._supervisors.pop(job_id, None)
