"""Queue hosts (a Slurm partition's node shape): the backend's own queue decides, so placement never holds
them busy, lists the partitions a task can never fit with why, and says why an unreachable cluster fits
nothing."""

from __future__ import annotations

from scheduler_testkit import host, req

from dstack.server.backends.base import CAP_CONTAINERS, CAP_QUEUE
from dstack.server.scheduler.model import Allocation
from dstack.server.scheduler.placement import (
    HostUsage,
    decide,
    misfit_offers,
    no_offer_message,
    offers,
    placement_note,
)

QUEUE = frozenset({CAP_QUEUE})


def partition(name: str = "hpc/gpu/8xCPU-64GB-2xA100", **kwargs: object) -> object:
    values: dict[str, object] = {
        "id": name, "name": name, "backend": "slurm", "region": "hpc", "cpus": 8, "memory_gb": 62.5,
        "gpus": [("A100", 80), ("A100", 80)], "capabilities": QUEUE, **kwargs,
    }  # fmt: skip
    return host(**values)  # type: ignore[arg-type]


def test_a_queue_host_is_never_busy_and_holds_what_was_asked() -> None:
    shape = partition()
    usage = HostUsage(
        shape, [Allocation(job_id=f"j{i}", cpus=8, memory_gb=62, gpus=(0, 1)) for i in range(5)]
    )  # type: ignore[arg-type]
    task = req("resources:\n  cpu: 8\n  gpu: A100:2\n")
    decision = decide(task, [usage], "next")
    assert decision.allocation is not None
    assert (decision.allocation.cpus, decision.allocation.memory_gb, decision.allocation.gpus) == (
        8,
        8,
        (0, 1),
    )
    assert [o.availability for o in offers(task, [usage])] == ["available"]


def test_the_offer_carries_the_node_counts() -> None:
    shape = partition(note="1 idle, 2 mixed, 0 allocated, 1 down")
    [offer] = offers(req(), [HostUsage(shape)])  # type: ignore[arg-type]
    assert (offer.availability, offer.note) == ("available", "1 idle, 2 mixed, 0 allocated, 1 down")


def test_partitions_that_never_fit_are_listed_with_why() -> None:
    small = partition("hpc/cpu/4xCPU-16GB", cpus=4, memory_gb=15.6, gpus=[])
    big = partition()
    usages = [HostUsage(small), HostUsage(big)]  # type: ignore[arg-type]
    task = req(gpu="A100:2")
    assert [o.host.name for o in offers(task, usages)] == ["hpc/gpu/8xCPU-64GB-2xA100"]
    [misfit] = misfit_offers(task, usages)
    assert misfit.host.name == "hpc/cpu/4xCPU-16GB" and misfit.availability == "no fit"
    assert misfit.note == "the task needs 2 A100 GPUs; it has 4 CPUs, 16GB memory, no GPU"
    images = misfit_offers(req(image=True), usages)
    assert [o.note for o in images] == ["runs no containers (its cluster declares no container runtime)"] * 2
    assert misfit_offers(req(image=True), [HostUsage(partition(capabilities=QUEUE | {CAP_CONTAINERS}))]) == []  # type: ignore[arg-type]
    # Left out by the task's own filters: not listed.
    assert misfit_offers(req(backends=["local"], gpu="A100:2"), usages) == []
    # Standing-agent hosts are not listed as misfits.
    assert misfit_offers(req(cpu="64"), [HostUsage(host())]) == []


def test_an_unreachable_cluster_says_why_nothing_fits() -> None:
    unknown = partition(
        "gone", cpus=0, memory_gb=0, gpus=[], available=False,
        unavailable_reason="Slurm cluster gone: 10.0.0.9 is unreachable: No route to host",
    )  # fmt: skip
    local = host()
    task = req(gpu="A100")  # the local host misses the GPU, the cluster's shape is unknown
    assert no_offer_message(task, [local, unknown]) == (  # type: ignore[list-item]
        "No host is available now "
        "(cluster gone: Slurm cluster gone: 10.0.0.9 is unreachable: No route to host)."
    )


def test_the_plan_says_slurm_decides() -> None:
    assert placement_note(req(gpu="1"), partition()) == (  # type: ignore[arg-type]
        "Submitted as one Slurm job to partition gpu of cluster hpc, asking for 2 CPUs, 8GB memory, 1 GPU: "
        "Slurm's queue decides when and on which node it starts, "
        "and the task sees exactly what Slurm allocates."
    )
