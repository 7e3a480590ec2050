"""Keeping the row leases of every job this process supervises, in one write per interval.

A supervisor owns its job's row while `lock_token` is its token and `lock_expires_at` is in the future.
Renewing each lease in its own transaction costs one write per job every few seconds: with a thousand jobs
in flight that is hundreds of writes a second on SQLite's single writer, for nothing. Here one UPDATE per
token renews them all, and a job whose row no longer carries its token (another worker took it over) has
its supervisor told at once, so it stops writing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import select, update

from dstack.server.context import ServerContext
from dstack.server.db.models import JobRow

log = logging.getLogger(__name__)

CHUNK = 500  # ids per statement, under every database's parameter limit


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
        expires = time.time() + self.ctx.settings.lease_seconds
        kept: set[str] = set()
        async with self.ctx.db.write() as session:
            for token, job_ids in by_token.items():
                for start in range(0, len(job_ids), CHUNK):
                    chunk = job_ids[start : start + CHUNK]
                    await session.execute(
                        update(JobRow)
                        .where(JobRow.id.in_(chunk), JobRow.lock_token == token)
                        .values(lock_expires_at=expires)
                    )
                    found = await session.execute(
                        select(JobRow.id).where(JobRow.id.in_(chunk), JobRow.lock_token == token)
                    )
                    kept.update(found.scalars())
        for job_id, (token, on_lost) in held.items():
            # A supervisor that finished (and cleared its lease) while this ran has released it already.
            if job_id not in kept and self._held.get(job_id, (None,))[0] == token:
                self._held.pop(job_id, None)
                on_lost()
