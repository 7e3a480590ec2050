"""Ended means ended on the host: stop whatever a host's agent runs that the database says has ended.

A job given up as `host lost` (its host stayed silent past the grace) may still run there: its capacity
was released without the host's word. So whenever a host answers (on its return, and every interval),
its agent's list of jobs is compared with the database: a job the server no longer counts as active
(given up as lost, stopped while its host was away) is aborted there, and a finished one the server holds
the output of is deleted from the host. A job the database counts as active is its supervisor's business,
and one it does not know at all is left alone (it may be another server's, on a host two servers share).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from dstack.core.statuses import ACTIVE_STATUSES
from dstack.server.backends.agent_client import AgentError
from dstack.server.backends.registry import UnknownHost
from dstack.server.context import ServerContext
from dstack.server.db.models import JobRow
from dstack.server.events import RECONCILE

log = logging.getLogger(__name__)

INTERVAL = 15.0
_ACTIVE = {s.value for s in ACTIVE_STATUSES}
_AGENT_ACTIVE = ("preparing", "running")


class Reconciler:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def run_forever(self) -> None:
        signal = self.ctx.notifier.signal(RECONCILE)
        while True:
            version = signal.version
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling the hosts' jobs failed")
            await signal.wait(version, INTERVAL)

    async def reconcile_once(self) -> None:
        hosts = [host_id for host_id, info in self.ctx.backends.entries() if info.available]
        await asyncio.gather(*(self._host(host_id) for host_id in hosts))

    async def _host(self, host_id: str) -> None:
        try:
            agent = self.ctx.backends.agent(host_id)
            jobs = await agent.list_jobs()
        except (AgentError, UnknownHost):
            return  # silent: its supervisors (and the next pass) deal with it
        if not jobs:
            return
        ids = [str(job["id"]) for job in jobs]
        async with self.ctx.db.read() as session:
            known = dict(
                (await session.execute(select(JobRow.id, JobRow.status).where(JobRow.id.in_(ids)))).all()
            )
        for job in jobs:
            job_id = str(job["id"])
            if job_id not in known or known[job_id] in _ACTIVE:
                continue
            try:
                if job["status"] in _AGENT_ACTIVE:
                    log.warning(
                        "host %s still runs job %s, which ended here (%s): stopping it",
                        self.ctx.backends.describe(host_id).name,
                        job_id,
                        known[job_id],
                    )
                    await agent.stop_job(job_id, abort=True)
                else:
                    await agent.delete_job(job_id)
            except AgentError as e:
                log.info("could not clean job %s up on its host: %s", job_id, e)
