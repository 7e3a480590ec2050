"""Placement and the environment: a Python version the host lacks, and hosts without Docker."""

from __future__ import annotations

from dstack.server.backends.base import CAP_CONTAINERS
from dstack.server.scheduler.model import Host, Requirements
from dstack.server.scheduler.placement import HostUsage, decide, mismatch, no_offer_message


def _host(**fields: object) -> Host:
    resources = {"cpus": 4, "memory_bytes": 16 * 1024**3, "pythons": ["3.11", "3.12"], **fields}
    return Host.from_resources(id="h", backend="local", name="local", resources=resources)


def test_a_python_the_host_lacks_and_cannot_download_is_a_mismatch() -> None:
    req = Requirements(python="3.13")
    host = _host()
    assert mismatch(req, host) == "python"
    message = no_offer_message(req, [host])
    assert message.startswith("No offer has Python 3.13 (not installed, and uv may not download it there)")
    assert decide(req, [HostUsage(host)], "job").impossible_reason == message


def test_a_python_the_host_has_or_may_download_fits() -> None:
    assert mismatch(Requirements(python="3.12"), _host()) is None
    assert mismatch(Requirements(python="3.13"), _host(python_downloads=True)) is None
    # A host that does not say which Pythons it has is not refused for it.
    unknown = Host.from_resources(
        id="h", backend="local", name="local", resources={"cpus": 4, "memory_bytes": 16 * 1024**3}
    )
    assert mismatch(Requirements(python="3.13"), unknown) is None


def test_image_tasks_need_a_host_with_containers() -> None:
    req = Requirements(needs_containers=True)
    without = _host()
    assert mismatch(req, without) == "containers"
    with_docker = Host.from_resources(
        id="h",
        backend="local",
        name="local",
        resources={"cpus": 4, "memory_bytes": 16 * 1024**3},
        capabilities=frozenset({CAP_CONTAINERS}),
    )
    assert mismatch(req, with_docker) is None
