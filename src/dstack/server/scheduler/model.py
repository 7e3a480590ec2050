"""Plain data the scheduler works on: what a task asks for, what a host has, what is held there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GB = 1024**3


@dataclass(frozen=True)
class Span:
    """A closed range; `max=None` is open-ended."""

    min: float = 0.0
    max: float | None = None

    def contains(self, value: float) -> bool:
        return value >= self.min and (self.max is None or value <= self.max)

    def describe(self, unit: str = "") -> str:
        lo = f"{self.min:g}{unit}"
        if self.max is None:
            return f"{lo}.."
        if self.max == self.min:
            return lo
        return f"{lo}..{self.max:g}{unit}"


@dataclass(frozen=True)
class GpuRequest:
    count: Span = field(default_factory=lambda: Span(1, None))
    names: tuple[str, ...] = ()  # upper-case; empty = any
    memory_gb: Span | None = None
    vendor: str | None = None

    def matches(self, gpu: Gpu) -> bool:
        if self.vendor and gpu.vendor.lower() != self.vendor.lower():
            return False
        if self.names and not any(_gpu_name_matches(n, gpu.name) for n in self.names):
            return False
        return not (self.memory_gb is not None and not self.memory_gb.contains(gpu.memory_gb))


def _gpu_name_matches(asked: str, name: str) -> bool:
    # "A100" matches "NVIDIA A100-SXM4-80GB"; compare tokens, so "A10" does not match "A100".
    normalized = name.upper().replace("-", " ").replace("_", " ").split()
    return asked.upper() in normalized or asked.upper() == name.upper()


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


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gb: float
    vendor: str = "nvidia"


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
        )


@dataclass(frozen=True)
class Allocation:
    """What one job holds on its host while it is active."""

    job_id: str
    cpus: float = 0.0
    memory_gb: float = 0.0
    gpus: tuple[int, ...] = ()
    ports: tuple[int, ...] = ()
    exclusive: bool = False  # asked for the whole host: nothing else may run beside it

    def to_json(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory_gb": self.memory_gb,
            "gpus": list(self.gpus),
            "ports": list(self.ports),
            "exclusive": self.exclusive,
        }

    @classmethod
    def from_json(cls, job_id: str, data: dict[str, Any]) -> Allocation:
        return cls(
            job_id=job_id,
            cpus=float(data.get("cpus", 0)),
            memory_gb=float(data.get("memory_gb", 0)),
            gpus=tuple(int(g) for g in data.get("gpus", [])),
            ports=tuple(int(p) for p in data.get("ports", [])),
            exclusive=bool(data.get("exclusive", False)),
        )
