"""The hosts a project can run on, as `dstack fleet` and the web UI show them: where each host is, its
status (idle, busy, or why it is not offered), its resources and the runs on it now."""

from __future__ import annotations

from typing import Any

from dstack.server.context import ServerContext
from dstack.server.scheduler.messages import describe_resources
from dstack.server.services.projects import Project
from dstack.server.services.usage import load_usages


async def list_hosts(
    ctx: ServerContext, project: Project, *, fleet: str | None = None
) -> list[dict[str, Any]]:
    """Every host the project may use (the local one, its fleets'), or only one fleet's."""
    hosts = [
        host
        for host in await ctx.backends.hosts(fresh=True)
        if host.project_id in (None, project.id)
        and (fleet is None or (host.backend == "ssh" and host.region == fleet))
    ]
    async with ctx.db.read() as session:
        usages = await load_usages(session, hosts)
    listed = []
    for usage in usages:
        host = usage.host
        info = ctx.backends.describe(host.id)
        runs = sorted({a.run_name for a in usage.allocations if a.run_name})
        if host.available:
            status = "busy" if usage.allocations else "idle"
        else:
            status = info.status if info.status not in (None, "ready") else "unavailable"
        listed.append(
            {
                "id": host.id,
                "backend": host.backend,
                "name": host.name,
                "region": host.region,
                "fleet": host.region if host.backend == "ssh" else None,
                "status": status,
                "message": None if host.available else host.unavailable_reason,
                "resources": describe_resources(host) if info.resources else None,
                "cpus": host.cpus if info.resources else None,
                "memory_gb": host.memory_gb if info.resources else None,
                "disk_gb": host.disk_gb if info.resources else None,
                "gpus": [{"index": g.index, "name": g.name, "memory_gb": g.memory_gb} for g in host.gpus],
                "runs": runs,
            }
        )
    return sorted(listed, key=lambda h: (h["backend"] != "local", h["region"], h["name"]))
