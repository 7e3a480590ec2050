"""Gang placement of multi-node runs: every node at once on distinct hosts of one cluster (a fleet with
placement: cluster, a Slurm partition), or none, with one sentence per backend that cannot hold them."""

from __future__ import annotations

from scheduler_testkit import held, host, req, usage

from dstack.server.backends.base import CAP_QUEUE
from dstack.server.scheduler.gang import decide_gang, gang_offers, impossible_message
from dstack.server.scheduler.placement import HostUsage


def fleet_host(id: str, *, cluster: str | None = "c1", fleet: str = "boxes", **kwargs: object) -> object:
    return host(
        id=id,
        name=f"10.0.0.{id[-1]}",
        backend="ssh",
        region=fleet,
        fleet=fleet,
        cluster=cluster,
        address=f"10.0.0.{id[-1]}",
        **kwargs,  # type: ignore[arg-type]
    )


def two(**kwargs: object) -> list[HostUsage]:
    return [usage(fleet_host("h1", **kwargs)), usage(fleet_host("h2", **kwargs))]  # type: ignore[arg-type]


def test_every_node_is_placed_at_once_on_its_own_host_master_on_the_first() -> None:
    reqs = [req()] * 2
    decision = decide_gang(reqs, two(), ["j0", "j1"])
    assert [(h.id, a.job_id) for h, a in decision.placements] == [("h1", "j0"), ("h2", "j1")]
    assert decision.wait_reason is None and decision.impossible_reason is None


def test_one_busy_host_keeps_the_whole_run_waiting_and_holds_nothing() -> None:
    usages = two()
    task = req("resources:\n  cpu: 1\n")
    usages[1].allocations.append(held("other", cpus=2, exclusive=True))
    decision = decide_gang([task] * 2, usages, ["j0", "j1"])
    assert decision.placements == ()
    assert decision.wait_reason is not None
    assert decision.wait_reason.startswith("fleet boxes has 1 of the 2 hosts the task needs free now")
    assert "held alone by run other" in decision.wait_reason
    assert set(decision.waits_for) == {"h1", "h2"}  # later runs keep off both
    assert usages[0].allocations == []  # nothing was held on the free host


def test_a_host_promised_to_an_earlier_run_is_not_taken() -> None:
    decision = decide_gang([req()] * 2, two(), ["j0", "j1"], blocked={"h2": "big"})
    assert decision.wait_reason is not None and "promised to run big" in decision.wait_reason


def test_no_cluster_big_enough_is_one_sentence_per_backend() -> None:
    usages = [
        usage(host(id="local")),
        usage(fleet_host("h1", cluster=None, fleet="loose")),  # type: ignore[arg-type]
        usage(fleet_host("h2", cluster=None, fleet="loose")),  # type: ignore[arg-type]
        usage(fleet_host("h3", cluster="c2", fleet="pair")),  # type: ignore[arg-type]
    ]
    message = decide_gang([req()] * 2, usages, ["j0", "j1"]).impossible_reason
    assert message == (
        "No offer fits 2 nodes: fleet pair has 1 host that fits a node, the task needs 2; backend local "
        "has one host (this machine); fleet loose has placement: any (apply it with placement: cluster if "
        "its hosts reach each other)."
    )
    assert impossible_message([req()] * 2, usages) == message
    assert gang_offers([req()] * 2, usages) == []


def test_an_unavailable_host_is_named_when_the_cluster_is_too_small_without_it() -> None:
    usages = [
        usage(fleet_host("h1")),  # type: ignore[arg-type]
        usage(fleet_host("h2", available=False, unavailable_reason="Connection refused")),  # type: ignore[arg-type]
    ]
    message = impossible_message([req()] * 2, usages)
    assert message is not None
    assert "fleet boxes has 1 host that fits a node, the task needs 2" in message
    assert "host 10.0.0.2 is unavailable: Connection refused" in message


def test_a_node_that_fits_nowhere_says_what_is_missing() -> None:
    message = impossible_message([req("resources:\n  cpu: 64\n")] * 2, two())
    assert message is not None and message.startswith("No offer has 64 CPUs: host 10.0.0.1 has 2 CPUs")


def test_node_groups_with_their_own_resources_are_matched_to_hosts() -> None:
    small, big = req("resources:\n  cpu: 1\n"), req("resources:\n  cpu: 8\n")
    usages = [usage(fleet_host("h1", cpus=2)), usage(fleet_host("h2", cpus=16))]  # type: ignore[arg-type]
    # The big node cannot go on the first host: the small one moves to let it fit.
    decision = decide_gang([big, small], usages, ["j0", "j1"])
    assert [(h.id, a.job_id) for h, a in decision.placements] == [("h2", "j0"), ("h1", "j1")]


def slurm_shape(name: str, nodes: int, **kwargs: object) -> object:
    values: dict[str, object] = {
        "id": name, "name": name, "backend": "slurm", "region": "hpc", "cpus": 4, "memory_gb": 16,
        "capabilities": frozenset({CAP_QUEUE}), "cluster": "hpc/all", "node_count": nodes, **kwargs,
    }  # fmt: skip
    return host(**values)  # type: ignore[arg-type]


def test_a_slurm_partition_takes_every_node_as_one_job_when_it_has_enough_nodes() -> None:
    usages = [usage(slurm_shape("hpc/all/4xCPU-16GB", 1)), usage(slurm_shape("hpc/all/4xCPU-16GB-2xGPU", 1))]  # type: ignore[arg-type]
    decision = decide_gang([req()] * 2, usages, ["j0", "j1"])
    assert [h.id for h, _ in decision.placements] == ["hpc/all/4xCPU-16GB"] * 2
    message = impossible_message([req()] * 3, usages)
    assert (
        message
        == "No offer fits 3 nodes: partition all of cluster hpc has 2 nodes that fit a node of the task, "
        "it needs 3."
    )
    [offer] = gang_offers([req()] * 2, usages)
    assert offer.availability == "available"
