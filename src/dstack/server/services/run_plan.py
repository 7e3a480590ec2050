"""What a run asked for and where it went: its requirements, profile, host and allocation (the plan as
the run page shows it; the offers of the moment are `POST /runs/plan`'s)."""

from __future__ import annotations

import json
from typing import Any

from dstack.server.context import ServerContext
from dstack.server.db.models import HostRow
from dstack.server.scheduler import placement
from dstack.server.scheduler.messages import describe_resources
from dstack.server.schemas import RunSpec
from dstack.server.services import runs as runs_service
from dstack.server.services import specs
from dstack.server.services.errors import ServiceError
from dstack.server.services.hosts import host_of_row
from dstack.server.services.projects import Project


async def placement_of(ctx: ServerContext, project: Project, name: str) -> dict[str, Any]:
    async with ctx.db.read() as session:
        run, job = await runs_service.find(session, project, name)
        host_row = await session.get(HostRow, job.host_id) if job is not None and job.host_id else None
    try:
        spec = RunSpec.model_validate_json(run.spec)
    except ValueError:  # a spec this server cannot read (written by another version): say so
        raise ServiceError(f"Run {name}'s spec cannot be read by this server") from None
    checked: specs.CheckedSpec | None = None
    note: str | None = None
    try:
        checked = specs.check(spec)
    except ServiceError as e:  # a spec an older server accepted: show what can be shown
        note = e.message
    result: dict[str, Any] = {
        "requirements": checked.describe() if checked else note,
        "profile": _profile(spec.profile),
        "image": spec.image,
        "python": spec.python,
        "ports": [p.model_dump() for p in spec.ports],
        "host": None,
        "allocation": json.loads(job.allocation) if job is not None and job.allocation else None,
        "sharing": None,
    }
    if host_row is not None:
        live = {h.id: h for h in await ctx.backends.hosts()}.get(host_row.id)
        host = host_of_row(host_row, live)
        result["host"] = {
            "id": host.id,
            "name": host.name,
            "backend": host.backend,
            "region": host.region,
            "resources": describe_resources(host),
            "price": host.price,
        }
        if checked is not None:
            result["sharing"] = placement.placement_note(checked.requirements, host)
    return result


def _profile(profile: dict[str, Any]) -> dict[str, Any]:
    keys = ("backends", "regions", "spot_policy", "max_price", "max_duration", "retry", "profile_name")
    return {k: profile.get(k) for k in keys}
