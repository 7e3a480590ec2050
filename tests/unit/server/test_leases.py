"""Row leases: eligibility, contention, expiry (stale owners), renewal and release, on a real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

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


def _claim(db: Database, token: str, now: float, skip: frozenset[str] = frozenset()) -> Any:
    return leases.claim_claimable(db, skip, token, now, 15)


def test_only_active_unleased_jobs_are_claimed_with_their_rows(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await _database(tmp_path)
        now = time.time()
        running = await _job(db, "running")
        await _job(db, "done")
        await _job(db, "submitted")  # waits for the scheduler, not for a supervisor
        await _job(db, "running", lock_expires_at=now + 60)  # another worker holds it
        stale = await _job(db, "pulling", lock_expires_at=now - 1)  # its owner died
        supervised = await _job(db, "running")  # this process supervises it already
        claimed = await _claim(db, "me", now, frozenset({supervised}))
        assert sorted(claimed) == sorted([running, stale])
        for job_id, (run, job) in claimed.items():
            assert job.id == job_id and job.lock_token == "me" and run.id == job.run_id
        assert await _claim(db, "other", now, frozenset({supervised})) == {}  # they carry a token now
        assert list(await _claim(db, "other", now)) == [supervised]
        await db.close()

    asyncio.run(scenario())


def test_two_workers_racing_never_claim_the_same_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await _database(tmp_path)
        jobs = [await _job(db, "running") for _ in range(20)]
        now = time.time()
        first, second = await asyncio.gather(_claim(db, "worker-a", now), _claim(db, "worker-b", now))
        assert sorted([*first, *second]) == sorted(jobs)
        assert not set(first) & set(second)
        await db.close()

    asyncio.run(scenario())


def test_renewal_only_by_the_owner_and_release(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await _database(tmp_path)
        job = await _job(db, "running")
        now = time.time()
        assert list(await _claim(db, "owner", now)) == [job]
        assert await _claim(db, "intruder", now) == {}
        assert await leases.renew_leases(db, "owner", [job], now + 30) == {job}
        assert await leases.renew_leases(db, "intruder", [job], now + 30) == set()
        # After the lease expires another worker may take the job; the old owner's renewal then fails.
        assert list(await _claim(db, "successor", now + 31)) == [job]
        assert await leases.renew_leases(db, "owner", [job], now + 60) == set()
        await leases.release_all(db)
        assert list(await _claim(db, "after-release", now)) == [job]
        await db.close()

    asyncio.run(scenario())
