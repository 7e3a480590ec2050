"""The nodes of a multi-node run as each node's supervisor sees them: when its turn to start comes
(`startup_order`), and what its environment says about the others (addresses, GPUs). Pure.

Every node has a supervisor of its own (one per job, as for single-node runs); they coordinate through the
database only, so a node's supervisor may live in another worker or replica: a node that ends asks the
others to stop through the run's `stop_requested` (services/transitions.end_node), and a node waiting for
its turn reads its peers' statuses, woken by the run's channel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dstack.core.statuses import RunStatus
from dstack.server.db.models import JobRow
from dstack.server.services.job_request import Cluster

LOOPBACK = "127.0.0.1"


def _started(job: JobRow) -> bool:
    return job.started_at is not None or job.status in (RunStatus.RUNNING.value, RunStatus.DONE.value)


def waits_for(order: str, rank: int, nodes: Sequence[JobRow]) -> str | None:
    """What a node waits for before its commands may start (None: it may start now).

    master-first: the workers start once the master runs; workers-first: the master once every worker
    runs; any: all at once. A node that already ended counts as started (it ran)."""
    if len(nodes) <= 1 or order == "any":
        return None
    if order == "master-first" and rank != 0:
        master = next((n for n in nodes if n.job_num == 0), None)
        if master is not None and not _started(master) and not RunStatus(master.status).is_finished:
            return "Waiting for the master node to start (startup_order: master-first)"
    if order == "workers-first" and rank == 0:
        waiting = [
            n for n in nodes if n.job_num != 0 and not _started(n) and not RunStatus(n.status).is_finished
        ]
        if waiting:
            nodes_word = "worker node" if len(waiting) == 1 else f"{len(waiting)} worker nodes"
            return f"Waiting for the {nodes_word} to start (startup_order: workers-first)"
    return None


def cluster_of(nodes: Sequence[JobRow], rank: int, gpus_here: int, addresses: Sequence[str] = ()) -> Cluster:
    """The run's nodes as node `rank`'s environment names them. `addresses`: what the backend's launch
    said (a Slurm job's nodes); else the addresses each node was placed with."""
    if not addresses:
        addresses = [n.address or LOOPBACK for n in sorted(nodes, key=lambda n: n.job_num)]
    gpus = [len(json.loads(n.allocation).get("gpus") or []) if n.allocation else 0 for n in nodes]
    total = sum(gpus) if len(nodes) > 1 else gpus_here
    return Cluster(
        rank=rank, addresses=tuple(addresses), gpus_per_node=gpus_here, gpus_total=max(total, gpus_here)
    )
