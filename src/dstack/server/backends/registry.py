"""The configured backends and the hosts they offer, with stable host ids kept in the database."""

from __future__ import annotations

import json
import logging
import time
import uuid

from sqlalchemy import select

from dstack.server.backends.agent_client import AgentClient
from dstack.server.backends.base import (
    Backend,
    HostInfo,
    JobEnd,
    Launched,
    LaunchProgress,
    LaunchRequest,
)
from dstack.server.db.engine import Database
from dstack.server.db.models import HostRow
from dstack.server.scheduler.model import Host

log = logging.getLogger(__name__)

# Fingerprints change slowly (free disk, mostly); re-reading them on every scheduling pass would put an
# HTTP round trip on the path of every run.
FINGERPRINT_TTL = 30.0


class UnknownHost(Exception):
    pass


class BackendRegistry:
    def __init__(self, db: Database, backends: list[Backend]) -> None:
        self._db = db
        self._backends = {b.type: b for b in backends}
        self._hosts: dict[str, tuple[Backend, HostInfo]] = {}
        self._synced_at = 0.0

    @property
    def types(self) -> list[str]:
        return list(self._backends)

    async def start(self) -> None:
        for backend in self._backends.values():
            await backend.start()
        await self.sync_hosts()

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()

    async def sync_hosts(self) -> None:
        found: list[tuple[Backend, HostInfo]] = []
        for backend in self._backends.values():
            try:
                found.extend((backend, info) for info in await backend.hosts())
            except Exception as e:  # one broken backend must not hide the others
                log.warning("backend %s did not list its hosts: %s", backend.type, e)
        async with self._db.write() as session:
            rows = {(r.backend, r.name): r for r in (await session.execute(select(HostRow))).scalars()}
            hosts: dict[str, tuple[Backend, HostInfo]] = {}
            for backend, info in found:
                row = rows.get((info.backend, info.name))
                if row is None:
                    row = HostRow(id=str(uuid.uuid4()), backend=info.backend, name=info.name)
                    session.add(row)
                row.resources = json.dumps(info.resources)
                row.price = info.price
                row.status = "ready" if info.available else "unavailable"
                row.last_seen_at = time.time()
                hosts[row.id] = (backend, info)
        self._hosts = hosts
        self._synced_at = time.monotonic()

    async def hosts(self, *, fresh: bool = False) -> list[Host]:
        if fresh or time.monotonic() - self._synced_at > FINGERPRINT_TTL:
            await self.sync_hosts()
        return [
            Host.from_resources(
                id=host_id,
                backend=info.backend,
                name=info.name,
                resources=info.resources,
                price=info.price,
                region=info.region,
                capabilities=info.capabilities,
                available=info.available,
                unavailable_reason=info.unavailable_reason,
                fleet=info.fleet,
                fleet_index=info.fleet_index,
                note=info.note,
            )
            for host_id, (_, info) in self._hosts.items()
        ]

    def agent(self, host_id: str) -> AgentClient:
        backend, info = self._entry(host_id)
        return backend.agent(info.name)

    def job_agent(self, host_id: str, job_id: str) -> AgentClient:
        backend, info = self._entry(host_id)
        return backend.job_agent(info.name, job_id)

    def needs_launch(self, host_id: str) -> bool:
        return self._entry(host_id)[0].needs_launch

    async def launch(self, host_id: str, request: LaunchRequest, progress: LaunchProgress) -> Launched:
        backend, info = self._entry(host_id)
        return await backend.launch(info.name, request, progress)

    async def job_ended(self, host_id: str, job_id: str) -> JobEnd | None:
        backend, info = self._entry(host_id)
        return await backend.job_ended(info.name, job_id)

    async def release(self, host_id: str, job_id: str) -> None:
        backend, info = self._entry(host_id)
        await backend.release(info.name, job_id)

    async def recover(self, host_id: str) -> bool:
        backend, info = self._entry(host_id)
        return await backend.recover(info.name)

    def describe(self, host_id: str) -> HostInfo:
        return self._entry(host_id)[1]

    def _entry(self, host_id: str) -> tuple[Backend, HostInfo]:
        try:
            return self._hosts[host_id]
        except KeyError:
            raise UnknownHost(f"Host {host_id} is not offered by any configured backend") from None
