"""Plain data the scheduler works on: what a task asks for, what a host has, what is held there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dstack.server.scheduler.gpu_names import gpu_name_matches, gpu_short_name

GB = 1024**3
# Drivers report a little less memory than a device is sold with (a 16GB T4 shows 15GB, a 24GB A10G 22.5GB),
# and a host's MemTotal leaves out what the kernel keeps; asking for the nominal size must still fit.
GPU_MEMORY_SLACK = 0.07
HOST_MEMORY_SLACK = 0.05


def memory_fits(actual_gb: float, asked_min_gb: float, slack: float) -> bool:
    return actual_gb >= asked_min_gb * (1 - slack) - 1e-9


@dataclass(frozen=True)
class Span:
    """A closed range; `max=None` is open-ended."""

    min: float = 0.0
    max: float | None = None

    def contains(self, value: float) -> bool:
        return value >= self.min and (self.max is None or value <= self.max)

    def describe(self, unit: str = "") -> str:
        show = format_gb if unit == "GB" else (lambda value: f"{value:g}{unit}")
        lo = show(self.min)
        if self.max is None:
            return f"{lo}.."
        if self.max == self.min:
            return lo
        return f"{lo}..{show(self.max)}"


def format_gb(value: float) -> str:
    """A size in GB as users write it: 512MB, 1.5GB, 80GB."""
    if 0 < value < 1:
        return f"{value * 1024:.0f}MB"
    return f"{value:.4g}GB"


@dataclass(frozen=True)
class GpuRequest:
    count: Span = field(default_factory=lambda: Span(1, None))
    names: tuple[str, ...] = ()  # upper-case; empty = any
    memory_gb: Span | None = None
    vendor: str | None = None

    def matches(self, gpu: Gpu) -> bool:
        if self.vendor and gpu.vendor.lower() != self.vendor.lower():
            return False
        if self.names and not any(gpu_name_matches(n, gpu.name) for n in self.names):
            return False
        if self.memory_gb is None:
            return True
        low_ok = memory_fits(gpu.memory_gb, self.memory_gb.min, GPU_MEMORY_SLACK)
        return low_ok and (self.memory_gb.max is None or gpu.memory_gb <= self.memory_gb.max + 1e-9)


@dataclass(frozen=True)
class Requirements:
    cpu: Span = field(default_factory=lambda: Span(2, None))
    memory_gb: Span = field(default_factory=lambda: Span(8, None))
    disk_gb: Span | None = None
    gpu: GpuRequest | None = None
    cpu_explicit: bool = False
    memory_explicit: bool = False
    arch: str | None = None
    ports: tuple[int, ...] = ()
    needs_containers: bool = False
    python: str | None = None  # the Python version a non-image task runs with ("3.12")
    max_price: float | None = None
    spot_policy: str = "on-demand"
    backends: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    # `fleets:` and `instances:` (a fleet's host by name/hostname, or (fleet, index)); None = any host.
    fleets: tuple[str, ...] | None = None
    instances: tuple[tuple[str | None, str | int], ...] | None = None
    needs_nvcc: bool = False  # `nvcc: true`: the host must have the CUDA compiler


@dataclass(frozen=True)
class Gpu:
    index: int  # as the driver numbers it (nvidia-smi's index): what CUDA_VISIBLE_DEVICES names
    name: str  # as the driver reports it, e.g. "NVIDIA A100-SXM4-80GB", or as an admin declared it
    memory_gb: float
    vendor: str = "nvidia"

    @property
    def short_name(self) -> str:
        return gpu_short_name(self.name)


@dataclass(frozen=True)
class Host:
    id: str
    backend: str
    name: str
    cpus: int
    memory_gb: float
    disk_gb: float | None = None
    arch: str = "x86_64"
    gpus: tuple[Gpu, ...] = ()
    price: float = 0.0
    region: str = "local"
    spot: bool = False
    capabilities: frozenset[str] = frozenset()
    available: bool = True
    unavailable_reason: str | None = None
    pythons: tuple[str, ...] | None = None  # Python versions installed there; None = not reported
    python_downloads: bool = False  # whether uv may install the versions it lacks
    # How the host's agent enforces CPU and memory limits ("cgroup v2", "cgroup v1"); None: it cannot.
    limits: str | None = None
    project_id: str | None = None  # None: offered to every project; a fleet host: its fleet's project
    # The fleet a host belongs to and its place in it (set by fleet backends; None for `local`).
    fleet: str | None = None
    fleet_index: int | None = None
    hostname: str | None = None
    gpu_metrics: bool | None = None  # whether GPU utilisation can be measured there; None: not reported
    note: str | None = None  # the backend's word on its availability, shown with the offer
    # Multi-node: hosts with the same `cluster` reach each other (a fleet with placement: cluster, a Slurm
    # partition), on `address`; a queue host stands for `node_count` nodes of its shape.
    cluster: str | None = None
    address: str | None = None
    node_count: int = 1

    @classmethod
    def from_resources(
        cls,
        *,
        id: str,
        backend: str,
        name: str,
        resources: dict[str, Any],
        price: float = 0.0,
        region: str = "local",
        capabilities: frozenset[str] = frozenset(),
        available: bool = True,
        unavailable_reason: str | None = None,
        project_id: str | None = None,
        fleet: str | None = None,
        fleet_index: int | None = None,
        note: str | None = None,
        cluster: str | None = None,
        address: str | None = None,
        node_count: int = 1,
    ) -> Host:
        disk = resources.get("disk_free_bytes")
        pythons = resources.get("pythons")
        gpus = tuple(
            Gpu(
                index=int(g.get("index", i)),
                name=str(g.get("name", "GPU")),
                memory_gb=float(g.get("memory_bytes", 0)) / GB,
                vendor=str(g.get("vendor", "nvidia")),
            )
            for i, g in enumerate(resources.get("gpus") or [])
        )
        return cls(
            id=id,
            backend=backend,
            name=name,
            cpus=int(resources.get("cpus", 1)),
            memory_gb=float(resources.get("memory_bytes", 0)) / GB,
            disk_gb=float(disk) / GB if disk is not None else None,
            arch=str(resources.get("arch", "x86_64")),
            gpus=gpus,
            price=price,
            region=region,
            capabilities=capabilities,
            available=available,
            unavailable_reason=unavailable_reason,
            pythons=tuple(str(v) for v in pythons) if isinstance(pythons, list) else None,
            python_downloads=bool(resources.get("python_downloads", False)),
            limits=str(resources["limits"]) if resources.get("limits") else None,
            project_id=project_id,
            fleet=fleet,
            fleet_index=fleet_index,
            hostname=str(resources["hostname"]) if resources.get("hostname") else None,
            gpu_metrics=bool(resources["gpu_metrics"]) if "gpu_metrics" in resources else None,
            note=note,
            cluster=cluster,
            address=address,
            node_count=node_count,
        )


@dataclass(frozen=True)
class Allocation:
    """What one job holds on its host while it is active.

    `cpus` and `memory_gb` are reserved (no two jobs' reservations exceed the host); `cpu_limit` and
    `memory_limit_gb` are the caps the agent enforces where it can (None: no cap beyond the host's).
    """

    job_id: str
    cpus: float = 0.0
    memory_gb: float = 0.0
    gpus: tuple[int, ...] = ()
    ports: tuple[int, ...] = ()
    exclusive: bool = False  # asked for the whole host: nothing else may run beside it
    cpu_limit: float | None = None
    memory_limit_gb: float | None = None
    run_name: str | None = None  # for messages ("held by run X"); not stored

    def to_json(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory_gb": self.memory_gb,
            "gpus": list(self.gpus),
            "ports": list(self.ports),
            "exclusive": self.exclusive,
            "cpu_limit": self.cpu_limit,
            "memory_limit_gb": self.memory_limit_gb,
        }

    @classmethod
    def from_json(cls, job_id: str, data: dict[str, Any], run_name: str | None = None) -> Allocation:
        cpu_limit, memory_limit = data.get("cpu_limit"), data.get("memory_limit_gb")
        return cls(
            job_id=job_id,
            cpus=float(data.get("cpus", 0)),
            memory_gb=float(data.get("memory_gb", 0)),
            gpus=tuple(int(g) for g in data.get("gpus", [])),
            ports=tuple(int(p) for p in data.get("ports", [])),
            exclusive=bool(data.get("exclusive", False)),
            cpu_limit=float(cpu_limit) if cpu_limit is not None else None,
            memory_limit_gb=float(memory_limit) if memory_limit is not None else None,
            run_name=run_name,
        )
