"""Fleets (`type: fleet`): plan an apply, apply it (hosts added, kept, removed), list, delete.

A fleet belongs to a project; its hosts are HostRows of backend `ssh` (services/hosts.py lists them). A
host is in one fleet at a time. Applying connects to every new host (pinning its host key), checks it,
ships and starts the agent; a host that fails stays in the fleet as `failed` (or `unreachable`) with
the one sentence saying why, and the next apply of the same file tries it again. A host that leaves the
fleet, or a deleted fleet, has its agent stopped; while tasks run there, that is refused unless the user
confirmed stopping them (`force`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from dstack.config.fleet import FleetConfiguration, ResolvedHost
from dstack.core.statuses import ACTIVE_STATUSES
from dstack.server.backends.ssh import (
    BACKEND,
    FAILED,
    REMOVED,
    SSHBackend,
    new_agent_token,
    target_from_json,
    target_to_json,
)
from dstack.server.context import ServerContext
from dstack.server.db.models import FleetRow, HostRow, JobRow, RunRow
from dstack.server.events import SCHEDULE
from dstack.server.scheduler.placement import runs_phrase
from dstack.server.services import hosts as hosts_service
from dstack.server.services import runs as runs_service
from dstack.server.services.errors import Conflict, NotFound, ServiceError
from dstack.server.services.projects import Project
from dstack.server.ssh import SSHTarget

_ACTIVE = [s.value for s in ACTIVE_STATUSES]
MAX_KEY_BYTES = 64 * 1024
STOP_WAIT_SECONDS = 120.0


def _backend(ctx: ServerContext) -> SSHBackend:
    backend = ctx.backends.backend(BACKEND)
    if not isinstance(backend, SSHBackend):
        raise ServiceError("This server has no ssh backend")
    return backend


def _configuration(data: dict[str, Any]) -> FleetConfiguration:
    try:
        configuration = FleetConfiguration.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ServiceError(f"The fleet configuration is not valid: {where}: {first['msg']}") from e
    if configuration.name is None:
        raise ServiceError("The fleet configuration has no name")
    return configuration


def _store_key(ctx: ServerContext, content: str) -> str:
    """Keep a private key the CLI sent (the server connects with it), private to the server's user."""
    data = content.encode()
    if len(data) > MAX_KEY_BYTES or b"PRIVATE KEY" not in data:
        raise ServiceError("An identity file sent with the fleet is not a private key")
    folder = ctx.settings.server_dir / "ssh" / "keys"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.key"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data if data.endswith(b"\n") else data + b"\n")
        tmp.replace(path)
    return str(path)


def _target(ctx: ServerContext, host: ResolvedHost, keys: dict[str, str]) -> SSHTarget:
    identity = None
    if host.identity_file is not None:
        content = keys.get(host.identity_file)
        if content is None:
            raise ServiceError(f"The identity file {host.identity_file} of {host.address} was not sent")
        identity = _store_key(ctx, content)
    return SSHTarget(
        hostname=host.hostname,
        port=host.port,
        user=host.user,
        identity_file=identity,
        proxy_jump=_target(ctx, host.proxy_jump, keys) if host.proxy_jump is not None else None,
        key_name=host.identity_file,
    )


async def _fleet_row(session: Any, project: Project, name: str) -> FleetRow | None:
    return (
        await session.execute(
            select(FleetRow).where(FleetRow.project_id == project.id, FleetRow.name == name)
        )
    ).scalar_one_or_none()


async def _host_rows(session: Any, fleet_id: str) -> list[HostRow]:
    return list(
        (
            await session.execute(
                select(HostRow).where(HostRow.fleet_id == fleet_id, HostRow.status != REMOVED)
            )
        ).scalars()
    )


async def _runs_on(session: Any, host_ids: list[str]) -> dict[str, list[str]]:
    """host id -> names of the runs with an active job there."""
    if not host_ids:
        return {}
    rows = await session.execute(
        select(JobRow.host_id, RunRow.name)
        .join(RunRow, RunRow.id == JobRow.run_id)
        .where(JobRow.host_id.in_(host_ids), JobRow.status.in_(_ACTIVE))
    )
    found: dict[str, list[str]] = {}
    for host_id, run_name in rows:
        found.setdefault(host_id, []).append(run_name)
    return found


async def plan(ctx: ServerContext, project: Project, data: dict[str, Any]) -> dict[str, Any]:
    configuration = _configuration(data)
    async with ctx.db.read() as session:
        return await _plan(session, project, configuration)


async def _plan(session: Any, project: Project, configuration: FleetConfiguration) -> dict[str, Any]:
    assert configuration.name is not None
    fleet = await _fleet_row(session, project, configuration.name)
    rows = await _host_rows(session, fleet.id) if fleet is not None else []
    by_name = {row.name: row for row in rows}
    wanted = {host.address: host for host in configuration.hosts()}
    # A host is in one fleet at a time (its agent and capacity can be offered once).
    taken = (
        await session.execute(
            select(HostRow.name, FleetRow.name)
            .join(FleetRow, FleetRow.id == HostRow.fleet_id)
            .where(HostRow.backend == BACKEND, HostRow.status != REMOVED, HostRow.name.in_(list(wanted)))
        )
    ).all()
    for host_name, fleet_name in taken:
        if fleet_name != configuration.name:
            raise Conflict(
                f"Host {host_name} is already in fleet {fleet_name}; remove it from there first "
                f"(or delete that fleet: dstack fleet delete {fleet_name})"
            )
    busy = await _runs_on(session, [row.id for row in rows if row.name not in wanted])
    hosts: list[dict[str, Any]] = []
    for name, host in wanted.items():
        row = by_name.get(name)
        if row is None:
            action = "add"
        elif row.status in (FAILED, "unreachable") or _changed(row, host):
            action = "retry" if row.status in (FAILED, "unreachable") else "update"
        else:
            action = "keep"
        hosts.append({"name": name, "user": host.user, "action": action})
    for row in rows:
        if row.name not in wanted:
            hosts.append({"name": row.name, "action": "remove", "runs": busy.get(row.id, [])})
    return {"name": configuration.name, "exists": fleet is not None, "hosts": hosts}


def _changed(row: HostRow, host: ResolvedHost) -> bool:
    stored = target_from_json(json.loads(row.ssh or "{}"))
    return (stored.user, stored.port, stored.key_name) != (host.user, host.port, host.identity_file) or (
        (stored.proxy_jump is None) != (host.proxy_jump is None)
    )


async def apply(
    ctx: ServerContext, project: Project, data: dict[str, Any], keys: dict[str, str], *, force: bool
) -> dict[str, Any]:
    configuration = _configuration(data)
    assert configuration.name is not None
    backend = _backend(ctx)
    wanted = {host.address: host for host in configuration.hosts()}
    targets = {name: _target(ctx, host, keys) for name, host in wanted.items()}
    now = time.time()
    async with ctx.db.write() as session:
        planned = await _plan(session, project, configuration)
        removed = [h for h in planned["hosts"] if h["action"] == "remove"]
        busy = [h for h in removed if h["runs"]]
        if busy and not force:
            runs = sorted({run for h in busy for run in h["runs"]})
            raise Conflict(
                f"Host {busy[0]['name']} leaves fleet {configuration.name} but runs "
                f"{runs_phrase(runs)}; stop them first, or apply with -y to stop them"
            )
        fleet = await _fleet_row(session, project, configuration.name)
        if fleet is None:
            fleet = FleetRow(
                id=str(uuid.uuid4()),
                project_id=project.id,
                name=configuration.name,
                created_at=now,
                updated_at=now,
                configuration="{}",
            )
            session.add(fleet)
        elif fleet.status != "active":
            raise Conflict(f"Fleet {configuration.name} is being deleted; apply it again once it is gone")
        fleet.configuration = configuration.model_dump_json()
        fleet.placement = configuration.placement
        fleet.status = "active"
        fleet.updated_at = now
        await session.flush()
        existing = {
            row.name: row
            for row in (await session.execute(select(HostRow).where(HostRow.backend == BACKEND))).scalars()
        }
        to_install = []
        for entry in planned["hosts"]:
            name = entry["name"]
            row = existing.get(name)
            if entry["action"] == "remove":
                continue
            if row is None:
                row = HostRow(id=str(uuid.uuid4()), backend=BACKEND, name=name, resources="{}")
                session.add(row)
            if entry["action"] != "keep" or row.status == REMOVED:
                row.status = "connecting"
                row.status_message = None
                to_install.append(name)
            row.fleet_id = fleet.id
            row.ssh = json.dumps(target_to_json(targets[name]))
            row.agent_token = row.agent_token or new_agent_token()
            row.address = wanted[name].internal_ip or wanted[name].hostname
        fleet_id = fleet.id
    if busy:
        await _stop_runs_on(ctx, project, sorted({run for h in busy for run in h["runs"]}))
    for entry in removed:
        await _remove_host(ctx, backend, entry["name"])
    await backend.reload()
    await asyncio.gather(*(backend.install(name) for name in to_install))
    await ctx.backends.refresh()
    ctx.notifier.notify(SCHEDULE)
    return await _fleet_json(ctx, project, fleet_id)


async def _stop_runs_on(ctx: ServerContext, project: Project, runs: list[str]) -> None:
    """Stop the runs and wait (bounded) until their jobs have ended on their hosts."""
    await runs_service.stop(ctx, project, runs, abort=False)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while time.monotonic() < deadline:
        async with ctx.db.read() as session:
            active = (
                await session.execute(
                    select(RunRow.name).where(
                        RunRow.project_id == project.id,
                        RunRow.name.in_(runs),
                        RunRow.status.in_(_ACTIVE),
                    )
                )
            ).first()
        if active is None:
            return
        await asyncio.sleep(0.2)


async def _remove_host(ctx: ServerContext, backend: SSHBackend, name: str) -> None:
    await backend.remove(name, stop_agent=True)
    async with ctx.db.write() as session:
        row = (
            await session.execute(select(HostRow).where(HostRow.backend == BACKEND, HostRow.name == name))
        ).scalar_one_or_none()
        if row is not None:
            row.status = REMOVED
            row.status_message = None
            row.fleet_id = None


async def list_fleets(ctx: ServerContext, project: Project) -> list[dict[str, Any]]:
    async with ctx.db.read() as session:
        fleets = (
            await session.execute(
                select(FleetRow).where(FleetRow.project_id == project.id).order_by(FleetRow.name)
            )
        ).scalars()
        ids = [fleet.id for fleet in fleets]
    return [await _fleet_json(ctx, project, fleet_id) for fleet_id in ids]


async def get(ctx: ServerContext, project: Project, name: str) -> dict[str, Any]:
    async with ctx.db.read() as session:
        fleet = await _fleet_row(session, project, name)
    if fleet is None:
        raise NotFound(f"Fleet {name} not found in project {project.name}")
    return await _fleet_json(ctx, project, fleet.id)


async def _fleet_json(ctx: ServerContext, project: Project, fleet_id: str) -> dict[str, Any]:
    async with ctx.db.read() as session:
        fleet = await session.get(FleetRow, fleet_id)
        assert fleet is not None
        data: dict[str, Any] = {
            "id": fleet.id,
            "name": fleet.name,
            "project": project.name,
            "placement": fleet.placement,
            "status": fleet.status,
            "created_at": fleet.created_at,
            "updated_at": fleet.updated_at,
        }
    data["hosts"] = await hosts_service.list_hosts(ctx, project, fleet=fleet.name)
    return data


async def delete(ctx: ServerContext, project: Project, names: list[str], *, force: bool) -> list[str]:
    backend = _backend(ctx)
    fleets = []
    async with ctx.db.read() as session:
        for name in names:
            fleet = await _fleet_row(session, project, name)
            if fleet is None:
                raise NotFound(f"Fleet {name} not found in project {project.name}")
            rows = await _host_rows(session, fleet.id)
            held = await _runs_on(session, [r.id for r in rows])
            runs = sorted({run for found in held.values() for run in found})
            if runs and not force:
                raise Conflict(
                    f"Fleet {name} runs {runs_phrase(runs)}; stop them first "
                    f"(dstack stop), or pass -y to stop them and delete the fleet"
                )
            fleets.append((fleet.id, name, [r.name for r in rows], runs))
    for fleet_id, _, _, _ in fleets:
        async with ctx.db.write() as session:
            row = await session.get(FleetRow, fleet_id)
            if row is not None:
                row.status = "deleting"  # no new job goes there from now on
    await backend.reload()
    await ctx.backends.refresh()
    for fleet_id, _, hosts, runs in fleets:
        if runs:
            await _stop_runs_on(ctx, project, runs)
        for host in hosts:
            await _remove_host(ctx, backend, host)
        async with ctx.db.write() as session:
            row = await session.get(FleetRow, fleet_id)
            if row is not None:
                await session.delete(row)
    await backend.reload()
    await ctx.backends.refresh()
    ctx.notifier.notify(SCHEDULE)
    return [name for _, name, _, _ in fleets]


def read_keys(files: dict[str, str]) -> dict[str, str]:
    """The identity files the CLI sent: {path as written: the key, base64}."""
    keys = {}
    for name, encoded in files.items():
        try:
            keys[name] = base64.b64decode(encoded, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise ServiceError(f"The identity file {name[:100]} was not sent as base64 text") from None
    return keys
