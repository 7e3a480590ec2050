"""The `ssh` backend: the hosts of the user's fleets (`type: fleet`), reached over SSH only.

Each host has one SSH connection (the server's SSH layer: an OpenSSH control master, host key pinned at
`dstack apply`), the agent shipped as a zipapp (and uv beside it) and started detached on the host's
loopback with a token of its own, and a unix-socket forward to that agent's port, through which the
server speaks the agent API (jobs, code, logs, ports, --reload). Nothing of the host listens beyond its
loopback; the server's and users' tokens never travel there.

Hosts are offers with BACKEND `ssh`, REGION the fleet's name and INSTANCE the host's address, for the
fleet's project only. The set changes at run time: `dstack apply` and `dstack fleet delete` go through
services/fleets.py, which calls `install` / `remove` here and then refreshes the registry.

A host that stops answering is `unreachable` (not offered; its running jobs wait for it, see the
supervisor's grace) and is tried again in the background; the agent survives the lost link, and when the
host answers again the server reconnects (its forwards come back at the same paths) and carries on.
Refusals that only the user can fix (a key refused, a changed host key, no Python, no disk space,
forwarding disabled) make a host `failed`, with the sentence, until the fleet is applied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dstack.server.backends.agent_client import AgentClient, AgentError, AgentUnreachable
from dstack.server.backends.base import CAP_CONTAINERS, Backend, HostInfo
from dstack.server.db.engine import Database
from dstack.server.db.models import FleetRow, HostRow
from dstack.server.remote import hostagent
from dstack.server.remote.artifact import Artifact, agent_zipapp, server_platform, uv_binary
from dstack.server.ssh import SSHError, SSHPool, SSHTarget

log = logging.getLogger(__name__)

BACKEND = "ssh"
READY = "ready"
UNREACHABLE = "unreachable"
FAILED = "failed"
CONNECTING = "connecting"
REMOVED = "removed"
HEALTH_SECONDS = 10.0
FINGERPRINT_SECONDS = 60.0
AGENT_TIMEOUT = 10.0
# An agent answers a ping in milliseconds; one that does not within this is taken as hung (a
# stopped process) and replaced, which its jobs outlive. Short, as the job's grace runs meanwhile.
HEALTH_TIMEOUT = 3.0


@dataclass
class FleetHost:
    """One host of a fleet, as this server knows it now."""

    row_id: str
    name: str  # its address in the fleet: hostname, or hostname:port
    fleet: str
    fleet_id: str
    project_id: str
    target: SSHTarget
    token: str
    resources: dict[str, Any] = field(default_factory=dict)
    status: str = CONNECTING
    message: str | None = None
    client: AgentClient | None = None
    port: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fingerprinted_at: float = 0.0
    active: bool = True  # False while its fleet is being deleted: no new job goes there
    # Whether it ever answered (its host key pinned then): a host that was down at `dstack apply` has its
    # key pinned when it first answers, as apply would have; later, only the pinned key is accepted.
    ever_connected: bool = False
    # Multi-node: the fleet's hosts reach each other (placement: cluster), this one on `address`.
    cluster: bool = False
    address: str | None = None


def target_from_json(data: dict[str, Any]) -> SSHTarget:
    jump = data.get("proxy_jump")
    return SSHTarget(
        hostname=data["hostname"],
        port=int(data.get("port", 22)),
        user=data.get("user", "root"),
        identity_file=data.get("identity_file"),
        proxy_jump=target_from_json(jump) if jump else None,
        key_name=data.get("key_name"),
    )


def target_to_json(target: SSHTarget) -> dict[str, Any]:
    return {
        "hostname": target.hostname,
        "port": target.port,
        "user": target.user,
        "identity_file": target.identity_file,
        "key_name": target.key_name,
        "proxy_jump": target_to_json(target.proxy_jump) if target.proxy_jump else None,
    }


def new_agent_token() -> str:
    return secrets.token_urlsafe(32)


class SSHBackend(Backend):
    type = BACKEND

    def __init__(self, db: Database, server_dir: Path, pool: SSHPool | None = None) -> None:
        self._db = db
        self.pool = pool or SSHPool(server_dir / "ssh")
        self._artifacts_dir = server_dir / "artifacts"
        self._hosts: dict[str, FleetHost] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health: asyncio.Task[None] | None = None
        self._port_forwards: dict[str, tuple[str, list[int]]] = {}  # job id -> (host, its forwarded ports)

    # -- the backend protocol ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        for host in list(self._hosts.values()):
            if host.status != FAILED:
                self._background(self.recover(host.name))
        self._health = asyncio.create_task(self._health_forever(), name="ssh-health")

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
        for task in list(self._tasks):
            task.cancel()
        for host in self._hosts.values():
            if host.client is not None:
                await host.client.close()
        # The masters stay: a restarted server adopts them (no new handshake), and jobs need none anyway.

    async def hosts(self) -> list[HostInfo]:
        return [self.describe(host) for host in self._hosts.values()]

    def describe(self, host: FleetHost) -> HostInfo:
        resources = host.resources
        available = host.status == READY and host.active
        reason = None
        if not host.active:
            reason = f"fleet {host.fleet} is being deleted"
        elif host.status != READY:
            reason = host.message or host.status
        return HostInfo(
            backend=BACKEND,
            name=host.name,
            resources=resources,
            price=0.0,
            region=host.fleet,
            available=available,
            unavailable_reason=reason,
            capabilities=frozenset({CAP_CONTAINERS}) if resources.get("docker") else frozenset(),
            project_id=host.project_id,
            status=host.status,
            fleet=host.fleet,
            cluster=f"fleet:{host.fleet_id}" if host.cluster else None,
            address=host.address,
        )

    def agent(self, host_name: str) -> AgentClient:
        host = self._hosts.get(host_name)
        if host is None:
            raise AgentUnreachable(f"Host {host_name} is in no fleet now")
        if host.client is None:
            raise AgentUnreachable(f"Host {host_name} is not connected: {host.message or host.status}")
        return host.client

    async def recover(self, host_name: str) -> bool:
        host = self._hosts.get(host_name)
        if host is None or host.status == FAILED:
            return False
        async with host.lock:
            if host.client is not None:
                try:
                    await host.client.ping(HEALTH_TIMEOUT)
                    self._set(host, READY, None)
                    return True
                except AgentError:
                    pass
            try:
                await self._connect(host, pin=not host.ever_connected)
            except SSHError as e:
                self._set(host, UNREACHABLE if e.unreachable else FAILED, e.message)
                return False
            except AgentError as e:
                self._set(host, UNREACHABLE, f"The dstack agent on {host.name} does not answer: {e}")
                return False
            return True

    async def port_socket(self, host_name: str, job_id: str, port: int) -> str | None:
        host = self._hosts.get(host_name)
        if host is None or host.status != READY:
            return None
        try:
            path = await self.pool.connection(host.target).forward("127.0.0.1", port)
        except SSHError:
            return None
        ports = self._port_forwards.setdefault(job_id, (host_name, []))[1]
        if port not in ports:
            ports.append(port)
        return str(path)

    async def release(self, host_name: str, job_id: str) -> None:
        """The job is over: its ports' forwards go (another task may listen on the port later)."""
        found = self._port_forwards.pop(job_id, None)
        host = self._hosts.get(host_name)
        if found is None or host is None:
            return
        connection = self.pool.connection(host.target)
        for port in found[1]:
            with contextlib.suppress(SSHError):
                await connection.unforward("127.0.0.1", port)

    # -- fleets: install and remove hosts ----------------------------------------------------------------

    async def reload(self) -> None:
        """Read the fleets' hosts from the database (after an apply or a delete, and at start)."""
        async with self._db.read() as session:
            rows = (
                await session.execute(
                    select(HostRow, FleetRow)
                    .join(FleetRow, FleetRow.id == HostRow.fleet_id)
                    .where(HostRow.backend == BACKEND, HostRow.status != REMOVED)
                )
            ).all()
        seen = set()
        for row, fleet in rows:
            seen.add(row.name)
            target = target_from_json(json.loads(row.ssh or "{}"))
            host = self._hosts.get(row.name)
            if host is None or host.target != target or host.token != row.agent_token:
                if host is not None and host.client is not None:
                    await host.client.close()
                host = FleetHost(
                    row_id=row.id,
                    name=row.name,
                    fleet=fleet.name,
                    fleet_id=fleet.id,
                    project_id=fleet.project_id,
                    target=target,
                    token=row.agent_token or "",
                    resources=json.loads(row.resources or "{}"),
                    # Not offered until connected again (the background recovery does it at once).
                    status=row.status if row.status in (UNREACHABLE, FAILED) else CONNECTING,
                    message=row.status_message,
                    ever_connected=row.last_seen_at is not None,
                )
                self._hosts[row.name] = host
            host.fleet, host.fleet_id, host.project_id = fleet.name, fleet.id, fleet.project_id
            host.active = fleet.status == "active"
            host.cluster, host.address = fleet.placement == "cluster", row.address
        for name in set(self._hosts) - seen:
            gone = self._hosts.pop(name)
            if gone.client is not None:
                await gone.client.close()

    def host(self, name: str) -> FleetHost | None:
        return self._hosts.get(name)

    async def install(self, name: str) -> FleetHost:
        """Connect to a host of a freshly applied fleet (pinning its key), check it, ship and start the agent.

        Never raises for the host's faults: they are the host's status and message (one sentence). An
        unreachable host is tried again in the background; a refusal waits for the next apply."""
        host = self._hosts[name]
        async with host.lock:
            self._set(host, CONNECTING, None)
            try:
                await self._connect(host, pin=True)
            except SSHError as e:
                self._set(host, UNREACHABLE if e.unreachable else FAILED, e.message)
            except AgentError as e:
                self._set(host, FAILED, f"The dstack agent on {host.name} does not answer: {e}")
        return host

    async def remove(self, name: str, *, stop_agent: bool) -> None:
        """Let go of a host leaving its fleet: stop its agent (and so any job left), close, unpin."""
        host = self._hosts.pop(name, None)
        if host is None:
            return
        async with host.lock:
            if stop_agent and host.status == READY:
                connection = self.pool.connection(host.target)
                with contextlib.suppress(SSHError, asyncio.TimeoutError):
                    found = await hostagent.probe(connection)
                    if found.agent is not None:
                        await hostagent.stop(connection, int(found.agent["pid"]), handover=False)
            if host.client is not None:
                await host.client.close()
            await self.pool.forget(host.target, unpin=True)

    # -- connecting --------------------------------------------------------------------------------------

    def _artifacts(self, found: hostagent.Probe) -> tuple[Artifact, Artifact | None]:
        agent = agent_zipapp(self._artifacts_dir)
        uv = uv_binary() if (found.os, found.arch) == server_platform() else None
        return agent, uv

    async def _connect(self, host: FleetHost, *, pin: bool) -> None:
        """Make sure the host's agent runs and answers through a forward; fingerprint it. Holds host.lock."""
        connection = self.pool.connection(host.target)
        await connection.open(pin=pin)
        found = await hostagent.probe(connection)
        agent, uv = self._artifacts(found)
        if pin:
            hostagent.check_disk(connection, found)
        await hostagent.ship(connection, found, [agent] + ([uv] if uv is not None else []))
        port = None
        if found.agent is not None and found.runs(agent):
            port = int(found.agent["port"])
            if not await self._answers(host, connection, port):
                port = None  # not ours (another token), or hung: replaced below, its jobs taken over
        if port is None:
            if found.agent is not None:
                # An older agent (or one that does not answer): the new one takes its jobs over.
                await hostagent.stop(connection, int(found.agent["pid"]), handover=True)
            port = await hostagent.start(connection, host.token, agent, uv)
        if pin:
            await connection.check_forwarding("127.0.0.1", port)
        await self._use_port(host, connection, port)
        assert host.client is not None
        facts = await host.client.host()
        host.resources = facts
        host.fingerprinted_at = time.monotonic()
        host.ever_connected = True
        self._set(host, READY, None)

    async def _answers(self, host: FleetHost, connection: Any, port: int) -> bool:
        try:
            await self._use_port(host, connection, port)
            assert host.client is not None
            await host.client.ping(HEALTH_TIMEOUT)
            return True
        except AgentError as e:
            log.info("the agent on %s does not answer (%s); starting a new one", host.name, e)
            return False

    async def _use_port(self, host: FleetHost, connection: Any, port: int) -> None:
        if host.port == port and host.client is not None:
            return
        if host.port is not None and host.port != port:
            await connection.unforward("127.0.0.1", host.port)
        path = await connection.forward("127.0.0.1", port)
        if host.client is not None:
            await host.client.close()
        host.client = AgentClient(
            f"http://{host.name}", host.token, timeout=AGENT_TIMEOUT, socket_path=str(path)
        )
        host.port = port

    def _set(self, host: FleetHost, status: str, message: str | None) -> None:
        if (host.status, host.message) == (status, message):
            return
        if status != READY:
            log.info("fleet host %s is %s: %s", host.name, status, message)
        came_back = status == READY and host.status != READY
        host.status, host.message = status, message
        self.hosts_changed()
        if came_back:
            self.host_back()
        self._background(self._persist(host))

    async def _persist(self, host: FleetHost) -> None:
        async with self._db.write() as session:
            row = await session.get(HostRow, host.row_id)
            if row is None or row.status == REMOVED:
                return
            row.status = host.status
            row.status_message = host.message
            if host.resources:
                row.resources = json.dumps(host.resources)
            if host.status == READY:
                row.last_seen_at = time.time()

    # -- health ------------------------------------------------------------------------------------------

    async def _health_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_SECONDS)
            hosts = [h for h in self._hosts.values() if h.status != FAILED and not h.lock.locked()]
            await asyncio.gather(*(self._check(host) for host in hosts), return_exceptions=True)

    async def _check(self, host: FleetHost) -> None:
        if host.status != READY or host.client is None:
            await self.recover(host.name)
            return
        try:
            if time.monotonic() - host.fingerprinted_at > FINGERPRINT_SECONDS:
                host.resources = await host.client.host()
                host.fingerprinted_at = time.monotonic()
                self._background(self._persist(host))
            else:
                await host.client.health()
        except AgentError:
            connection = self.pool.connection(host.target)
            try:
                await connection.ensure()
                await self.recover(host.name)
            except SSHError as e:
                self._set(host, UNREACHABLE if e.unreachable else FAILED, e.message)

    def _background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
