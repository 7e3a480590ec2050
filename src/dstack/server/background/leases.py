"""Row leases on jobs: a worker owns a job while its lease is unexpired and carries its token.

Claiming is a compare-and-set UPDATE, so of two workers (or two server replicas sharing PostgreSQL) racing
for one job exactly one wins; a crashed worker's jobs become claimable when their leases expire.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select, update

from dstack.core.statuses import ACTIVE_STATUSES
from dstack.server.db.engine import Database
from dstack.server.db.models import JobRow

_ACTIVE = [s.value for s in ACTIVE_STATUSES]


def _claimable(now: float) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (JobRow.status.in_(_ACTIVE), or_(JobRow.lock_expires_at.is_(None), JobRow.lock_expires_at < now))


async def claimable_jobs(db: Database, now: float) -> list[str]:
    async with db.read() as session:
        return list((await session.execute(select(JobRow.id).where(*_claimable(now)))).scalars())


async def claim_jobs(
    db: Database, job_ids: list[str], token: str, now: float, lease_seconds: float
) -> list[str]:
    """Claim what is still claimable of `job_ids`; returns the ids this token now owns."""
    claimed = []
    async with db.write() as session:
        for job_id in job_ids:
            result = await session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, *_claimable(now))
                .values(lock_token=token, lock_expires_at=now + lease_seconds)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                claimed.append(job_id)
    return claimed


async def renew_lease(db: Database, job_id: str, token: str, until: float) -> bool:
    """Extend the lease if `token` still owns it; False means another worker has the job now."""
    async with db.write() as session:
        result = await session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.lock_token == token)
            .values(lock_expires_at=until)
        )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def release_all(db: Database) -> None:
    """Void every lease (only for SQLite, whose database belongs to this one process)."""
    async with db.write() as session:
        await session.execute(update(JobRow).values(lock_token=None, lock_expires_at=None))
