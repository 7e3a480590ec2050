"""Row leases: eligibility, contention, expiry (stale owners), renewal and release, on a real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from dstack.server.background import leases
from dstack.server.db.engine import Database
from dstack.server.db.migrate import migrate
from dstack.server.db.models import JobRow, ProjectRow, RunRow, UserRow


async def _database(tmp_path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(db.writer)
    async with db.write() as session:
        session.add(UserRow(id="u", name="admin", token_hash="h", is_admin=True, created_at=0))
        await session.flush()
        session.add(ProjectRow(id="p", name="main", owner_id="u", created_at=0))
    return db


async def _job(db: Database, status: str, lock_expires_at: float | None = None) -> str:
    run_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with db.write() as session:
        session.add(
            RunRow(
                id=run_id,
                project_id="p",
                user_id="u",
                name=run_id[:8],
                submitted_at=0,
                status=status,
                spec="{}",
            )
        )
        await session.flush()
        session.add(
            JobRow(
                id=job_id,
                run_id=run_id,
                status=status,
                submitted_at=0,
                lock_token="old",
                lock_expires_at=lock_expires_at,
            )
        )
    return job_id


def test_only_active_unleased_jobs_are_claimable(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await _database(tmp_path)
        now = time.time()
        running = await _job(db, "running")
        await _job(db, "done")
        await _job(db, "submitted")  # waits for the scheduler, not for a supervisor
        held = await _job(db, "running", lock_expires_at=now + 60)
        stale = await _job(db, "pulling", lock_expires_at=now - 1)  # its owner died
        assert set(await leases.claimable_jobs(db, now)) == {running, stale}
        assert held not in await leases.claimable_jobs(db, now)
        await db.close()

    asyncio.run(scenario())


def test_two_workers_racing_never_claim_the_same_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await _database(tmp_path)
        jobs = [await _job(db, "running") for _ in range(20)]
        now = time.time()
        first, second = await asyncio.gather(
            leases.claim_jobs(db, jobs, "worker-a", now, 15),
            leases.claim_jobs(db, list(reversed(jobs)), "worker-b", now, 15),
        )
        assert sorted(first + second) == sorted(jobs)
        assert not set(first) & set(second)
        await db.close()

    asyncio.run(scenario())


def test_renewal_only_by_the_owner_and_release(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await _database(tmp_path)
        job = await _job(db, "running")
        now = time.time()
        assert await leases.claim_jobs(db, [job], "owner", now, 15) == [job]
        assert await leases.claim_jobs(db, [job], "intruder", now, 15) == []
        assert await leases.renew_leases(db, "owner", [job], now + 30) == {job}
        assert await leases.renew_leases(db, "intruder", [job], now + 30) == set()
        # After the lease expires another worker may take the job; the old owner's renewal then fails.
        assert await leases.claim_jobs(db, [job], "successor", now + 31, 15) == [job]
        assert await leases.renew_leases(db, "owner", [job], now + 60) == set()
        await leases.release_all(db)
        assert job in await leases.claimable_jobs(db, now)
        await db.close()

    asyncio.run(scenario())


def test_one_claim_finds_claims_and_loads_the_claimable_jobs_but_those_skipped(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await _database(tmp_path)
        now = time.time()
        free = [await _job(db, "running"), await _job(db, "pulling", lock_expires_at=now - 1)]
        supervised = await _job(db, "running")  # this process supervises it already
        held = await _job(db, "running", lock_expires_at=now + 60)  # another worker does
        await _job(db, "done")
        claimed, loaded = await leases.claim_claimable(db, {supervised}, "me", now, 15)
        assert sorted(claimed) == sorted(free)
        assert sorted(loaded) == sorted(free)
        for job_id in free:
            run, job = loaded[job_id]
            assert job.id == job_id and job.lock_token == "me" and run.id == job.run_id
        # The claimed ones carry the token now; the others are as they were.
        assert await leases.claim_jobs(db, free, "other", now, 15) == []
        assert await leases.claim_jobs(db, [held], "other", now, 15) == []
        assert await leases.claim_claimable(db, {supervised}, "again", now, 15) == ([], {})
        assert await leases.claim_jobs(db, [supervised], "other", now, 15) == [supervised]
        await db.close()

    asyncio.run(scenario())
