"""A run's status history, and the project's feed of status changes (what keeps run lists live).

The entries are written by `transitions.py`, in the transaction that changes a status. The feed is a
wake-up call, not a ledger: on PostgreSQL an entry with a lower id may commit after a higher one, so a
watcher refreshes what it shows when the feed moves (and now and then anyway) rather than applying
entries one by one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import func, select

from dstack.server.context import ServerContext
from dstack.server.db.models import RunRow, TransitionRow
from dstack.server.events import RUNS
from dstack.server.services.errors import NotFound
from dstack.server.services.projects import Project

HISTORY_LIMIT = 2000
FEED_LIMIT = 500
# Output floods wake the feed too (see events.Notifier); waking at most this often keeps it cheap.
FEED_COALESCE = 0.05


def entry_json(row: TransitionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "status": row.status,
        "status_message": row.status_message,
        "termination_reason": row.termination_reason,
        "termination_message": row.termination_message,
        "exit_code": row.exit_code,
    }


async def of_run(ctx: ServerContext, project: Project, name: str) -> list[dict[str, Any]]:
    async with ctx.db.read() as session:
        run_id = (
            await session.execute(
                select(RunRow.id).where(RunRow.project_id == project.id, RunRow.name == name)
            )
        ).scalar_one_or_none()
        if run_id is None:
            raise NotFound(f"Run {name} not found in project {project.name}")
        rows = (
            await session.execute(
                select(TransitionRow)
                .where(TransitionRow.run_id == run_id)
                .order_by(TransitionRow.id)
                .limit(HISTORY_LIMIT)
            )
        ).scalars()
        return [entry_json(row) for row in rows]


async def changes(ctx: ServerContext, project: Project, *, after: int | None, wait: float) -> dict[str, Any]:
    """{"last": id, "entries": [{"id", "run", "status", "at"}]}: the project's entries after `after`."""
    signal = ctx.notifier.signal(RUNS)
    deadline = time.monotonic() + wait
    while True:
        version = signal.version
        async with ctx.db.read() as session:
            last = (await session.execute(select(func.max(TransitionRow.id)))).scalar() or 0
            if after is None:
                return {"last": last, "entries": []}
            rows = (
                await session.execute(
                    select(TransitionRow.id, TransitionRow.status, TransitionRow.at, RunRow.name)
                    .join(RunRow, RunRow.id == TransitionRow.run_id)
                    .where(TransitionRow.id > after, RunRow.project_id == project.id)
                    .order_by(TransitionRow.id)
                    .limit(FEED_LIMIT)
                )
            ).all()
        if rows:
            return {
                "last": rows[-1].id,
                "entries": [{"id": r.id, "run": r.name, "status": r.status, "at": r.at} for r in rows],
            }
        # Nothing of this project: skip what other projects wrote, so the next look starts past it.
        after = max(after, last)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return {"last": after, "entries": []}
        # Other replicas write without notifying this process: look again at the poll interval.
        await signal.wait(version, min(remaining, ctx.settings.poll_seconds))
        await asyncio.sleep(FEED_COALESCE)
