"""Placement: a pure function from (requirements, hosts, what they hold now) to a decision. No I/O.

Sharing policy (stated in every plan):
- CPU and memory a task sets explicitly (in the configuration, a profile or a flag) are reserved for it;
  a task that sets neither shares the host with others, as processes on a workstation do.
- A task whose explicit CPU or memory request covers the whole host runs alone there.
- GPUs are never shared: a task holds the GPUs it gets, and sees only those.
- A task's ports are held on its host (tasks listen on the host's network), so two tasks that listen on
  the same port never land on one host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dstack.server.backends.base import CAP_CONTAINERS
from dstack.server.scheduler.model import Allocation, Host, Requirements

SHARING_POLICY = (
    "Tasks that set no cpu/memory share a host; explicit cpu, memory, GPUs and ports are reserved; "
    "a task asking for a whole host runs alone."
)


@dataclass
class HostUsage:
    host: Host
    allocations: list[Allocation] = field(default_factory=list)

    @property
    def reserved_cpus(self) -> float:
        return sum(a.cpus for a in self.allocations)

    @property
    def reserved_memory_gb(self) -> float:
        return sum(a.memory_gb for a in self.allocations)

    @property
    def used_gpus(self) -> set[int]:
        return {g for a in self.allocations for g in a.gpus}

    @property
    def used_ports(self) -> set[int]:
        return {p for a in self.allocations for p in a.ports}

    @property
    def held_exclusively(self) -> bool:
        return any(a.exclusive for a in self.allocations)


@dataclass(frozen=True)
class Offer:
    host: Host
    availability: str  # available | busy | unavailable
    note: str | None = None  # why busy or unavailable


@dataclass(frozen=True)
class Decision:
    allocation: Allocation | None = None
    host: Host | None = None
    wait_reason: str | None = None  # fits some host, but not now
    impossible_reason: str | None = None  # no host can ever fit it

    @property
    def placed(self) -> bool:
        return self.allocation is not None


def mismatch(req: Requirements, host: Host) -> str | None:
    """Why `host` can never run the task (a short noun phrase), or None if its totals fit."""
    if req.backends is not None and host.backend not in req.backends:
        return "backend"
    if req.regions is not None and host.region not in req.regions:
        return "region"
    if req.needs_containers and CAP_CONTAINERS not in host.capabilities:
        return "containers"
    if _lacks_python(req, host):
        return "python"
    if req.spot_policy == "spot" and not host.spot:
        return "spot"
    if req.spot_policy == "on-demand" and host.spot:
        return "on-demand"
    if req.max_price is not None and host.price > req.max_price:
        return "price"
    if req.arch and not _arch_matches(req.arch, host.arch):
        return "arch"
    if host.cpus < req.cpu.min:
        return "cpu"
    if host.memory_gb + 0.5 < req.memory_gb.min:  # hosts report a little less than their nominal size
        return "memory"
    if req.disk_gb is not None and host.disk_gb is not None and host.disk_gb < req.disk_gb.min:
        return "disk"
    if req.gpu is not None and req.gpu.count.min > 0:
        matching = [g for g in host.gpus if req.gpu.matches(g)]
        if len(matching) < req.gpu.count.min:
            return "gpu"
    return None


def _lacks_python(req: Requirements, host: Host) -> bool:
    # A host that did not report its Pythons, or whose uv may download one, is given the benefit.
    missing = req.python is not None and host.pythons is not None and req.python not in host.pythons
    return missing and not host.python_downloads


def _arch_matches(asked: str, arch: str) -> bool:
    asked = asked.lower()
    family = "arm" if arch.lower() in ("aarch64", "arm64") else "x86"
    return asked == family or asked == arch.lower()


def allocate(req: Requirements, usage: HostUsage, job_id: str) -> Allocation | str:
    """Reserve what the task needs on a host whose totals fit; a string says why it is busy."""
    host = usage.host
    if usage.held_exclusively:
        return f"{_host_label(host)} is held by a task that asked for all of it"
    cpus = req.cpu.min if req.cpu_explicit else 0.0
    memory = req.memory_gb.min if req.memory_explicit else 0.0
    exclusive = (req.cpu_explicit and cpus >= host.cpus) or (
        req.memory_explicit and memory + 0.5 >= host.memory_gb
    )
    if exclusive and usage.allocations:
        return f"{_host_label(host)} must be free for a task asking for all of it"
    if cpus > host.cpus - usage.reserved_cpus:
        return f"{_host_label(host)} has {host.cpus - usage.reserved_cpus:g} of {host.cpus} CPUs free"
    if not req.cpu_explicit and usage.reserved_cpus >= host.cpus:
        return f"all CPUs of {_host_label(host)} are reserved"
    if memory > host.memory_gb - usage.reserved_memory_gb + 0.5:
        free = host.memory_gb - usage.reserved_memory_gb
        return f"{_host_label(host)} has {free:.0f}GB of {host.memory_gb:.0f}GB memory free"
    busy_ports = sorted(set(req.ports) & usage.used_ports)
    if busy_ports:
        return f"port {busy_ports[0]} on {_host_label(host)} is held by another task"
    gpus: tuple[int, ...] = ()
    if req.gpu is not None and req.gpu.count.min > 0:
        used = usage.used_gpus
        free_gpus = sorted(g.index for g in host.gpus if req.gpu.matches(g) and g.index not in used)
        want = int(req.gpu.count.min)
        if len(free_gpus) < want:
            return f"{_host_label(host)} has {len(free_gpus)} matching GPU(s) free, the task needs {want}"
        gpus = tuple(free_gpus[:want])
    return Allocation(
        job_id=job_id, cpus=cpus, memory_gb=memory, gpus=gpus, ports=tuple(req.ports), exclusive=exclusive
    )


def offers(req: Requirements, usages: Iterable[HostUsage]) -> list[Offer]:
    """Hosts whose totals fit, cheapest first; busy and unavailable ones after the available ones."""
    result = []
    for usage in usages:
        if mismatch(req, usage.host) is not None:
            continue
        if not usage.host.available:
            result.append(Offer(usage.host, "unavailable", usage.host.unavailable_reason))
            continue
        outcome = allocate(req, usage, "plan")
        if isinstance(outcome, str):
            result.append(Offer(usage.host, "busy", outcome))
        else:
            result.append(Offer(usage.host, "available"))
    order = {"available": 0, "busy": 1, "unavailable": 2}
    return sorted(result, key=lambda o: (order[o.availability], o.host.price))


def decide(
    req: Requirements, usages: list[HostUsage], job_id: str, blocked: set[str] | None = None
) -> Decision:
    """Place on the cheapest host that fits now; else say what it waits for, or why it never fits.

    `blocked` holds hosts an earlier waiting task is queued for: later tasks may not take them, so the
    queue stays first-come-first-served and a big task is not starved by a stream of small ones.
    """
    blocked = blocked or set()
    fitting = [u for u in usages if mismatch(req, u.host) is None and u.host.available]
    if not fitting:
        return Decision(impossible_reason=no_offer_message(req, [u.host for u in usages]))
    reasons = []
    for usage in sorted(fitting, key=lambda u: u.host.price):
        if usage.host.id in blocked:
            reasons.append(f"{_host_label(usage.host)} is promised to an earlier task")
            continue
        outcome = allocate(req, usage, job_id)
        if isinstance(outcome, Allocation):
            return Decision(allocation=outcome, host=usage.host)
        reasons.append(outcome)
    return Decision(wait_reason="; ".join(reasons))


def no_offer_message(req: Requirements, hosts: list[Host]) -> str:
    if not hosts:
        return "No offer fits: no backend has any host."
    misses = [mismatch(req, h) for h in hosts]
    miss = next((m for m in misses if m is not None), None)
    if miss is None:  # every host fits on paper but none is available
        notes = "; ".join(f"{_host_label(h)}: {h.unavailable_reason or 'unavailable'}" for h in hosts)
        return f"No host is available now ({notes})."
    have = "; ".join(describe_host(h) for h in hosts[:3])
    return f"{_MISS_SENTENCES[miss](req)}: {have}."


def _gpu_wanted(req: Requirements) -> str:
    gpu = req.gpu
    assert gpu is not None
    count = int(gpu.count.min)
    name = "/".join(gpu.names) + " " if gpu.names else ""
    memory = f" with {gpu.memory_gb.describe('GB')} memory" if gpu.memory_gb is not None else ""
    if count == 1:
        return f"No offer has {'an' if name[:1] in 'AEIOU' and name else 'a'} {name}GPU{memory}"
    return f"No offer has {count} {name}GPUs{memory}"


_MISS_SENTENCES = {
    "backend": lambda r: f"No offer is from backend {', '.join(r.backends or ())}",
    "region": lambda r: f"No offer is in region {', '.join(r.regions or ())}",
    "containers": lambda r: "No offer can run containers (an image task needs Docker on its host)",
    "python": lambda r: f"No offer has Python {r.python} (not installed, and uv may not download it there)",
    "spot": lambda r: "No offer is a spot instance",
    "on-demand": lambda r: "No offer is on-demand",
    "price": lambda r: f"No offer costs at most ${r.max_price:g}/h",
    "arch": lambda r: f"No offer has a {r.arch} CPU",
    "cpu": lambda r: f"No offer has {r.cpu.describe()} CPUs",
    "memory": lambda r: f"No offer has {r.memory_gb.describe('GB')} memory",
    "disk": lambda r: f"No offer has {r.disk_gb.describe('GB') if r.disk_gb else ''} free disk",
    "gpu": _gpu_wanted,
}


def _host_label(host: Host) -> str:
    return "this machine" if host.backend == "local" else f"host {host.name}"


def describe_host(host: Host) -> str:
    return f"{_host_label(host)} has {describe_resources(host)}"


def describe_resources(host: Host) -> str:
    parts = [f"{host.cpus} CPUs", f"{host.memory_gb:.0f}GB memory"]
    if host.gpus:
        names: dict[str, int] = {}
        for g in host.gpus:
            label = f"{g.name} ({g.memory_gb:.0f}GB)"
            names[label] = names.get(label, 0) + 1
        parts.append(", ".join(f"{n}x{label}" for label, n in names.items()))
    else:
        parts.append("no GPU")
    return ", ".join(parts)


def describe_allocation(host: Host, allocation: Allocation) -> str:
    """What a placed task holds, for `ps`: reserved amounts, or the host's when it shares the host."""
    shared = not allocation.cpus and not allocation.memory_gb
    cpus = host.cpus if shared else allocation.cpus
    memory = host.memory_gb if shared else allocation.memory_gb
    parts = [f"{cpus:g}xCPU", f"{memory:.0f}GB"]
    if allocation.gpus:
        by_index = {g.index: g for g in host.gpus}
        gpu = by_index.get(allocation.gpus[0])
        label = f"{gpu.name} ({gpu.memory_gb:.0f}GB)" if gpu else "GPU"
        parts.append(f"{len(allocation.gpus)}x{label}")
    text = ", ".join(parts)
    return f"{text} (shared)" if shared else text
