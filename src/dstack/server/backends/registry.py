"""The configured backends and the hosts they offer, with stable host ids kept in the database.

The set of hosts is not fixed: fleets are applied and deleted while the server runs, so every sync asks
each backend again (`refresh` right after a change). A backend that fails to list its hosts (the local
agent hung, say) keeps the hosts it listed last, as they were, rather than vanishing from every plan:
its own recovery (and the supervisors' grace) decides what becomes of them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

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
        self._listed: dict[str, list[HostInfo]] = {}  # backend type -> what it listed last
        self._synced_at = 0.0
        for backend in backends:
            backend.on_hosts_changed = self._stale

    @property
    def types(self) -> list[str]:
        return list(self._backends)

    def backend(self, backend_type: str) -> Backend | None:
        return self._backends.get(backend_type)

    def _stale(self) -> None:
        self._synced_at = 0.0  # the next use lists the hosts again

    def on_host_back(self, callback: Callable[[], None]) -> None:
        for backend in self._backends.values():
            backend.on_host_back = callback

    async def start(self) -> None:
        for backend in self._backends.values():
            await backend.start()
        await self.sync_hosts()

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()

    async def refresh(self) -> None:
        """Hosts were added or removed (a fleet applied or deleted): list them again now."""
        await self.sync_hosts()

    async def sync_hosts(self) -> None:
        found: list[tuple[Backend, HostInfo]] = []
        for backend in self._backends.values():
            try:
                listed = await backend.hosts()
                self._listed[backend.type] = listed
            except Exception as e:  # one broken backend must not hide the others, nor its own hosts
                log.warning("backend %s did not list its hosts: %s", backend.type, e)
                listed = self._listed.get(backend.type, [])
            found.extend((backend, info) for info in listed)
        async with self._db.write() as session:
            rows = {(r.backend, r.name): r for r in (await session.execute(select(HostRow))).scalars()}
            hosts: dict[str, tuple[Backend, HostInfo]] = {}
            for backend, info in found:
                row = rows.get((info.backend, info.name))
                if row is None:
                    row = HostRow(id=str(uuid.uuid4()), backend=info.backend, name=info.name)
                    session.add(row)
                if info.resources:
                    row.resources = json.dumps(info.resources)
                row.price = info.price
                row.status = info.status or ("ready" if info.available else "unavailable")
                row.status_message = info.unavailable_reason
                if info.available:
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
                project_id=info.project_id,
                fleet=info.fleet,
                fleet_index=info.fleet_index,
                note=info.note,
                cluster=info.cluster,
                address=info.address,
                node_count=info.node_count,
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

    async def port_socket(self, host_id: str, job_id: str, port: int) -> str | None:
        backend, info = self._entry(host_id)
        return await backend.port_socket(info.name, job_id, port)

    def ports_here(self, host_id: str) -> bool:
        backend, info = self._entry(host_id)
        return backend.ports_here(info.name)

    def output_file(self, host_id: str, job_id: str) -> Path | None:
        backend, info = self._entry(host_id)
        return backend.output_file(info.name, job_id)

    def lost_after(self, host_id: str) -> float | None:
        backend, info = self._entry(host_id)
        return backend.lost_after(info.name)

    def describe(self, host_id: str) -> HostInfo:
        return self._entry(host_id)[1]

    def known(self, host_id: str) -> bool:
        return host_id in self._hosts

    def entries(self) -> list[tuple[str, HostInfo]]:
        """(host id, what its backend said of it) for every host offered now."""
        return [(host_id, info) for host_id, (_, info) in self._hosts.items()]

    def _entry(self, host_id: str) -> tuple[Backend, HostInfo]:
        try:
            return self._hosts[host_id]
        except KeyError:
            raise UnknownHost(f"Host {host_id} is not offered by any configured backend") from None
