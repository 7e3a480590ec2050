"""How long finished runs and their output are kept (config.yml's `retention`), and deleting them.

A retention pass deletes finished runs finished more than `max_age` ago, then, while the output of all
finished runs together is over `max_size`, the oldest ones. It never touches a run that is not finished,
one a client of this server is reading (`Readers`: the attach stream, `dstack logs`), nor, by size, one
that finished within KEEP_RECENT (so a run's output outlives its end long enough to be looked at). The
pass runs when a run ends and every PASS_EVERY seconds. Deleting a run removes its rows and the server's
copy of its output; `dstack delete` does the same on request (`delete_finished`).

With several server replicas (PostgreSQL), each one knows only its own readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from dstack.core.statuses import FINISHED_STATUSES
from dstack.server.config_file import RetentionConfig
from dstack.server.db.models import Base, JobRow, RunRow
from dstack.server.events import RETENTION
from dstack.server.services import logs

log = logging.getLogger(__name__)

KEEP_RECENT = 600.0  # seconds: a run that just ended is not deleted for the size of the output
PASS_EVERY = 600.0  # a pass at least this often ...
PASS_GAP = 10.0  # ... and, when runs end, at most this often (a pass reads every finished run)
_FINISHED = [s.value for s in FINISHED_STATUSES]


class Readers:
    """Which runs a client is reading now (in this process): retention leaves them alone."""

    def __init__(self) -> None:
        self._count: Counter[str] = Counter()
        self._lock = threading.Lock()  # `dstack logs` streams from a thread pool

    @contextlib.contextmanager
    def reading(self, run_id: str) -> Iterator[None]:
        with self._lock:
            self._count[run_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._count[run_id] -= 1
                if self._count[run_id] <= 0:
                    del self._count[run_id]

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._count


@dataclass(frozen=True)
class Candidate:
    run_id: str
    finished_at: float
    size: int  # bytes of output the server keeps for it
    read: bool  # a client reads it now


def choose(candidates: Sequence[Candidate], policy: RetentionConfig, now: float) -> list[str]:
    """The finished runs to delete (pure: the rules of the module's docstring)."""
    chosen: list[str] = []
    kept: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: c.finished_at):
        if candidate.read:
            continue
        if policy.max_age is not None and now - candidate.finished_at > policy.max_age:
            chosen.append(candidate.run_id)
        else:
            kept.append(candidate)
    if policy.max_size is not None:
        total = sum(c.size for c in candidates if c.run_id not in chosen)
        for candidate in kept:  # oldest first
            if total <= policy.max_size:
                break
            if now - candidate.finished_at < KEEP_RECENT:
                break
            chosen.append(candidate.run_id)
            total -= candidate.size
    return chosen


async def delete_runs(ctx: Any, session: Any, run_ids: Sequence[str]) -> None:
    """Delete runs inside a write transaction: their rows, every row that points at them (jobs, status
    history, run tokens, and whatever table is added later), and the server's copy of their output."""
    if not run_ids:
        return
    job_ids = (await session.execute(select(JobRow.id).where(JobRow.run_id.in_(run_ids)))).scalars().all()
    for table, column in _pointing_at_runs():
        await session.execute(delete(table).where(column.in_(run_ids)))
    await session.execute(delete(RunRow).where(RunRow.id.in_(run_ids)))
    for job_id in job_ids:
        logs.remove(ctx.settings, job_id)


def _pointing_at_runs() -> list[tuple[Any, Any]]:
    """(table, column) for every foreign key to runs.id, found in the models (not every database
    cascades: SQLite does only with foreign keys turned on)."""
    found = []
    for table in reversed(Base.metadata.sorted_tables):
        for key in table.foreign_keys:
            if key.column.table.name == RunRow.__tablename__:
                found.append((table, key.parent))
    return found


async def enforce(ctx: Any) -> int:
    """One retention pass; returns how many runs it deleted."""
    policy: RetentionConfig = ctx.retention
    if policy.max_age is None and policy.max_size is None:
        return 0
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(RunRow.id, RunRow.finished_at, JobRow.id.label("job_id"))
                .join(JobRow, JobRow.run_id == RunRow.id, isouter=True)
                .where(RunRow.status.in_(_FINISHED))
            )
        ).all()
    finished: dict[str, float] = {run_id: finished_at or 0.0 for run_id, finished_at, _ in rows}
    # A stat per finished job: with many thousands of runs, milliseconds the event loop must not wait for.
    sizes = await asyncio.to_thread(_output_sizes, ctx, rows, policy.run_output_limit)
    candidates = [Candidate(r, f, sizes[r], r in ctx.readers) for r, f in finished.items()]
    chosen = choose(candidates, policy, time.time())
    if not chosen:
        return 0
    async with ctx.db.write() as session:
        # Still finished and unread at the moment of deleting (a run name may have been reused meanwhile).
        still = (
            (
                await session.execute(
                    select(RunRow.id).where(RunRow.id.in_(chosen), RunRow.status.in_(_FINISHED))
                )
            )
            .scalars()
            .all()
        )
        gone = [run_id for run_id in still if run_id not in ctx.readers]
        await delete_runs(ctx, session, gone)
    if gone:
        log.info("retention: deleted %d finished runs and their output", len(gone))
    return len(gone)


def _output_sizes(ctx: Any, rows: Sequence[Any], bound: int | None) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for run_id, _, job_id in rows:
        if job_id is not None:
            sizes[run_id] += logs.size(ctx.settings, job_id, bound)
    return sizes


async def run_forever(ctx: Any) -> None:
    signal = ctx.notifier.signal(RETENTION)
    while True:
        version = signal.version
        try:
            await enforce(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention pass failed")
        await asyncio.sleep(PASS_GAP)
        await signal.wait(version, PASS_EVERY)
