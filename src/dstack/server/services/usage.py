"""What every host holds now: the allocations of its active jobs (and their runs' names), in one query."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from dstack.core.statuses import ACTIVE_STATUSES
from dstack.server.db.models import JobRow, RunRow
from dstack.server.scheduler.model import Allocation, Host
from dstack.server.scheduler.placement import HostUsage

_ACTIVE = [s.value for s in ACTIVE_STATUSES]


async def load_usages(session: Any, hosts: list[Host]) -> list[HostUsage]:
    usages = {h.id: HostUsage(host=h) for h in hosts}
    rows = await session.execute(
        select(JobRow.id, JobRow.host_id, JobRow.allocation, RunRow.name)
        .join(RunRow, RunRow.id == JobRow.run_id)
        .where(JobRow.status.in_(_ACTIVE), JobRow.host_id.is_not(None))
    )
    for job_id, host_id, allocation, run_name in rows:
        usage = usages.get(host_id)
        if usage is not None and allocation:
            usage.allocations.append(Allocation.from_json(job_id, json.loads(allocation), run_name))
    return list(usages.values())
