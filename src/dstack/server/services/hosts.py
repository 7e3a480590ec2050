"""The hosts the server knows (the `hosts` table and the backends' live view), with what runs on them.

One endpoint for the web UI's fleets page, `dstack fleet` and any API user: each host with its status
(`ready`, or why it is not offered: `unreachable`, `failed`, `connecting` with the sentence for an SSH
fleet's host), resources, GPUs (and which run holds each), and the runs on it. Runs of other projects are
counted, never named; another project's fleets are not shown at all. Hosts are grouped by `fleet`: the
backend and region they come from (for SSH fleets, the fleet's name).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from dstack.core.statuses import ACTIVE_STATUSES
from dstack.server.context import ServerContext
from dstack.server.db.models import FleetRow, HostRow, JobRow, RunRow
from dstack.server.scheduler.messages import describe_resources
from dstack.server.scheduler.model import Host
from dstack.server.services.projects import Project

_ACTIVE = [s.value for s in ACTIVE_STATUSES]


def host_of_row(row: HostRow, live: Host | None) -> Host:
    """The scheduler's view of a host: the live one where a backend offers it now, else the stored one."""
    if live is not None:
        return live
    return Host.from_resources(
        id=row.id,
        backend=row.backend,
        name=row.name,
        resources=_resources(row),
        price=row.price,
        available=False,
        unavailable_reason="no configured backend offers it now",
    )


def _resources(row: HostRow) -> dict[str, Any]:
    try:
        data = json.loads(row.resources or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def list_hosts(
    ctx: ServerContext, project: Project, *, fleet: str | None = None
) -> list[dict[str, Any]]:
    """Every host the project may see (this machine's, its fleets'), or only those of one of its fleets."""
    live = {h.id: h for h in await ctx.backends.hosts()}
    async with ctx.db.read() as session:
        found = (
            await session.execute(
                select(HostRow, FleetRow.project_id, FleetRow.name)
                .outerjoin(FleetRow, FleetRow.id == HostRow.fleet_id)
                .where(HostRow.status != "removed")
                .order_by(HostRow.backend, HostRow.name)
            )
        ).all()
        rows = [
            row
            for row, owner, fleet_name in found
            if (row.fleet_id is None or owner == project.id) and (fleet is None or fleet_name == fleet)
        ]
        jobs = (
            await session.execute(
                select(
                    JobRow.host_id,
                    JobRow.allocation,
                    RunRow.project_id,
                    RunRow.name,
                    RunRow.status,
                    RunRow.resources,
                    RunRow.submitted_at,
                )
                .join(RunRow, RunRow.id == JobRow.run_id)
                .where(JobRow.status.in_(_ACTIVE), JobRow.host_id.is_not(None))
            )
        ).all()
    on_host: dict[str, list[Any]] = {}
    for job in jobs:
        on_host.setdefault(job.host_id, []).append(job)
    return [_host_json(row, live.get(row.id), on_host.get(row.id, []), project) for row in rows]


def _host_json(row: HostRow, live: Host | None, jobs: list[Any], project: Project) -> dict[str, Any]:
    host = host_of_row(row, live)
    gpu_holder: dict[int, str | None] = {}
    runs = []
    others = 0
    for job in sorted(jobs, key=lambda j: j.submitted_at):
        mine = job.project_id == project.id
        allocation = json.loads(job.allocation) if job.allocation else {}
        for index in allocation.get("gpus", []):
            gpu_holder[int(index)] = job.name if mine else None
        if mine:
            runs.append({"name": job.name, "status": job.status, "resources": job.resources})
        else:
            others += 1
    if live is None:
        status = "gone"
    elif not live.available:
        # A fleet host says why (unreachable, failed, connecting); others are just not available.
        status = row.status if row.status not in (None, "ready") else "unavailable"
    else:
        status = "ready"
    return {
        "id": row.id,
        "backend": row.backend,
        "fleet": f"{host.backend}/{host.region}",
        "region": host.region,
        "name": row.name,
        "status": status,
        "status_message": host.unavailable_reason if status != "ready" else None,
        "last_seen_at": row.last_seen_at,
        "price": row.price,
        "resources": describe_resources(host),
        "cpus": host.cpus,
        "arch": host.arch,
        "memory_gb": round(host.memory_gb, 1),
        "disk_free_gb": round(host.disk_gb, 1) if host.disk_gb is not None else None,
        "gpus": [
            {
                "index": g.index,
                "name": g.short_name,
                "memory_gb": round(g.memory_gb, 1),
                "vendor": g.vendor,
                "busy": g.index in gpu_holder,
                "run": gpu_holder.get(g.index),
            }
            for g in host.gpus
        ],
        "capabilities": sorted(host.capabilities),
        "runs": runs,
        "other_projects_runs": others,
    }
