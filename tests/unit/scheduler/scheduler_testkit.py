"""Hosts, requirements and usages built by hand: the scheduler's inputs are plain data."""

from __future__ import annotations

from typing import Any

from dstack.config import parse_overrides, resolve_profile
from dstack.config.loader import parse_configuration
from dstack.server.scheduler.model import Allocation, Gpu, Host, Requirements
from dstack.server.scheduler.placement import HostUsage
from dstack.server.schemas import RunSpec
from dstack.server.services.specs import requirements_of


def host(
    *,
    id: str = "h1",
    name: str = "local",
    backend: str = "local",
    cpus: int = 2,
    memory_gb: float = 24,
    gpus: list[tuple[str, float]] | None = None,
    price: float = 0.0,
    spot: bool = False,
    limits: str | None = "cgroup v1",
    **kwargs: Any,
) -> Host:
    return Host(
        id=id,
        backend=backend,
        name=name,
        cpus=cpus,
        memory_gb=memory_gb,
        gpus=tuple(Gpu(index=i, name=n, memory_gb=m) for i, (n, m) in enumerate(gpus or [])),
        price=price,
        spot=spot,
        limits=limits,
        **kwargs,
    )


def req(
    configuration: str = "",
    *,
    ports: list[int] | None = None,
    image: bool = False,
    **flags: Any,
) -> Requirements:
    """Requirements as the server derives them from a task file and `dstack run` flags."""
    text = "type: task\ncommands: [':']\n" + configuration
    parsed = parse_configuration(text, filename="t.dstack.yml")
    profile = resolve_profile(parsed, None, parse_overrides(**flags))
    spec = RunSpec(
        configuration=parsed.model_dump(mode="json"),
        profile=profile.model_dump(mode="json"),
        ports=[{"container_port": p} for p in ports or []],
        image="img" if image else None,
    )
    return requirements_of(spec, profile, parsed)


def usage(h: Host, *allocations: Allocation) -> HostUsage:
    return HostUsage(host=h, allocations=list(allocations))


def held(
    run: str, *, cpus: float = 0, memory: float = 0, gpus: tuple[int, ...] = (), **kwargs: Any
) -> Allocation:
    return Allocation(job_id=f"job-{run}", cpus=cpus, memory_gb=memory, gpus=gpus, run_name=run, **kwargs)
