"""Placement fields of today's dstack: `fleets`, `instances` and `nvcc` restrict the hosts a task may use."""

from __future__ import annotations

from scheduler_testkit import host, req, usage

from dstack.server.backends.base import CAP_NVCC
from dstack.server.scheduler import placement

LOCAL = host(id="local", name="local")
FLEET_HOSTS = [
    host(id="a", name="gpu-a", backend="ssh", fleet="team", fleet_index=0, hostname="10.0.0.5"),
    host(id="b", name="gpu-b", backend="ssh", fleet="team", fleet_index=1),
    host(id="c", name="other", backend="ssh", fleet="lab", fleet_index=0),
]


def offered(configuration: str, hosts: list[object]) -> list[str]:
    return [o.host.name for o in placement.offers(req(configuration), [usage(h) for h in hosts])]  # type: ignore[arg-type]


def test_fleets_keep_only_the_hosts_of_those_fleets() -> None:
    assert offered("fleets: [team]\n", [LOCAL, *FLEET_HOSTS]) == ["gpu-a", "gpu-b"]
    assert offered("fleets: [team, lab]\n", [LOCAL, *FLEET_HOSTS]) == ["gpu-a", "gpu-b", "other"]


def test_instances_by_name_hostname_or_fleet_and_index() -> None:
    hosts = [LOCAL, *FLEET_HOSTS]
    assert offered("instances: [gpu-b]\n", hosts) == ["gpu-b"]
    assert offered("instances: ['10.0.0.5']\n", hosts) == ["gpu-a"]
    assert offered("instances: [{fleet: lab, index: 0}]\n", hosts) == ["other"]
    assert offered("instances: [local]\n", hosts) == ["local"]


def test_no_fleet_here_is_one_sentence() -> None:
    message = placement.no_offer_message(req("fleets: [team]\n"), [LOCAL])
    assert message.startswith(
        "No offer is in fleet team (a fleet's hosts are offers once it is applied with dstack apply): "
    )


def test_nvcc_needs_a_host_with_the_cuda_compiler() -> None:
    with_nvcc = host(id="n", name="with-nvcc", capabilities=frozenset({CAP_NVCC}))
    assert offered("nvcc: true\n", [LOCAL, with_nvcc]) == ["with-nvcc"]
    assert placement.no_offer_message(req("nvcc: true\n"), [LOCAL]).startswith(
        "No offer has the CUDA compiler (nvcc: true needs nvcc on the host): "
    )


def test_a_cloud_backend_name_is_accepted_and_offers_nothing_here() -> None:
    assert offered("backends: [aws]\n", [LOCAL]) == []
    assert placement.no_offer_message(req("backends: [aws]\n"), [LOCAL]).startswith(
        "No offer is from backend aws: "
    )
