"""Row leases on jobs: a worker owns a job while its lease is unexpired and carries its token.

Claiming is a compare-and-set UPDATE, so of two workers (or two server replicas sharing PostgreSQL) racing
for one job exactly one wins; a crashed worker's jobs become claimable when their leases expire.

Renewing each lease in its own transaction would cost one write per job every few seconds: with a thousand
jobs in flight, hundreds of writes a second on SQLite's single writer, for nothing. `LeaseKeeper` renews all
of a process's leases with one UPDATE per token, and tells a supervisor at once when its job's row no
longer carries its token (another worker took it over), so it stops writing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container

from sqlalchemy import ColumnElement, or_, select, update

from dstack.core.statuses import ACTIVE_STATUSES
from dstack.server.context import ServerContext
from dstack.server.db.engine import Database
from dstack.server.db.models import JobRow, RunRow

log = logging.getLogger(__name__)

_ACTIVE = [s.value for s in ACTIVE_STATUSES]
CHUNK = 500  # ids per statement, under every database's parameter limit


def _claimable(now: float) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (JobRow.status.in_(_ACTIVE), or_(JobRow.lock_expires_at.is_(None), JobRow.lock_expires_at < now))


async def claim_claimable(
    db: Database, skip: Container[str], token: str, now: float, lease_seconds: float
) -> dict[str, tuple[RunRow, JobRow]]:
    """Find the claimable jobs (but those in `skip`), claim them and load their rows, in one write
    transaction: on SQLite its statements run in place, where a read, a write and a read cost the claim
    loop two waits for the event loop's next iteration, seconds in all under a burst. Returns the jobs this
    token now owns, each with its run's row and its own, for their supervisors."""
    claimed: dict[str, tuple[RunRow, JobRow]] = {}
    async with db.write() as session:
        found = (await session.execute(select(JobRow.id).where(*_claimable(now)))).scalars()
        candidates = [job_id for job_id in found if job_id not in skip]
        # Three statements per CHUNK jobs, not some per job: the token is new for every claim, so the rows
        # that carry it after the UPDATE are exactly the ones this claim won.
        for start in range(0, len(candidates), CHUNK):
            chunk = candidates[start : start + CHUNK]
            await session.execute(
                update(JobRow)
                .where(JobRow.id.in_(chunk), *_claimable(now))
                .values(lock_token=token, lock_expires_at=now + lease_seconds)
                .execution_options(synchronize_session=False)
            )
            won = await session.execute(
                select(RunRow, JobRow)
                .join(JobRow, JobRow.run_id == RunRow.id)
                .where(JobRow.id.in_(chunk), JobRow.lock_token == token)
            )
            for run, job in won:
                claimed[job.id] = (run, job)
    return claimed


async def renew_leases(db: Database, token: str, job_ids: list[str], until: float) -> set[str]:
    """Extend the leases `token` still owns among `job_ids`; returns those (the others were lost)."""
    kept: set[str] = set()
    async with db.write() as session:
        for start in range(0, len(job_ids), CHUNK):
            chunk = job_ids[start : start + CHUNK]
            await session.execute(
                update(JobRow)
                .where(JobRow.id.in_(chunk), JobRow.lock_token == token)
                .values(lock_expires_at=until)
                .execution_options(synchronize_session=False)
            )
            found = await session.execute(
                select(JobRow.id).where(JobRow.id.in_(chunk), JobRow.lock_token == token)
            )
            kept.update(found.scalars())
    return kept


async def release_all(db: Database) -> None:
    """Void every lease (only for SQLite, whose database belongs to this one process)."""
    async with db.write() as session:
        await session.execute(update(JobRow).values(lock_token=None, lock_expires_at=None))


class LeaseKeeper:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._held: dict[str, tuple[str, Callable[[], None]]] = {}  # job id -> (token, on_lost)

    def hold(self, job_id: str, token: str, on_lost: Callable[[], None]) -> None:
        self._held[job_id] = (token, on_lost)

    def release(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    async def run_forever(self) -> None:
        interval = self.ctx.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("renewing job leases failed")

    async def renew_once(self) -> None:
        held = dict(self._held)
        if not held:
            return
        by_token: dict[str, list[str]] = {}
        for job_id, (token, _) in held.items():
            by_token.setdefault(token, []).append(job_id)
        until = time.time() + self.ctx.settings.lease_seconds
        kept: set[str] = set()
        for token, job_ids in by_token.items():
            kept |= await renew_leases(self.ctx.db, token, job_ids, until)
        for job_id, (token, on_lost) in held.items():
            # A supervisor that finished (and cleared its lease) while this ran has released it already.
            if job_id not in kept and self._held.get(job_id, (None,))[0] == token:
                self._held.pop(job_id, None)
                on_lost()
