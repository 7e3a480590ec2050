"""Placement: a pure function from (requirements, hosts, what they hold now) to a decision. No I/O.

Sharing policy (the plan states it for each task, see `messages.placement_note`):
- A task that sets neither cpu nor memory reserves nothing: it shares its host with other tasks, as
  processes on a workstation do, and is not capped.
- cpu and memory a task sets (configuration, profile or flag) reserve the minimum of its range on the host,
  so reservations never add up to more than the host has. The maximum of the range (the value itself for
  `cpu: 4`) caps the task where the agent can enforce it (cgroups for processes, container limits for
  images); an open range (`memory: 16GB..`) reserves its minimum and is not capped.
- A task whose reservation covers the whole host (every CPU, or all of its memory) runs alone there.
- GPUs are never shared: a task holds the fewest GPUs its count allows and sees only those.
- A task's ports are held on its host (tasks listen on the host's network), so two tasks that listen on
  the same port never land on one host.
- A queue host (`CAP_QUEUE`: a Slurm partition's node shape) is never busy here: the backend's own queue
  decides when and on which node a job starts, so every job whose request fits the shape is handed over
  at once, and its allocation records only what was asked (the GPU indices are the backend's to choose).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dstack.server.backends.base import CAP_CONTAINERS, CAP_NVCC, CAP_QUEUE

# Re-exported: callers know these from here.
from dstack.server.scheduler.messages import (  # noqa: F401
    describe_allocation,
    describe_host,
    describe_resources,
    host_label,
    misfit_note,
    no_offer_sentence,
    placement_note,
    shape_unknown,
)
from dstack.server.scheduler.model import (
    HOST_MEMORY_SLACK,
    Allocation,
    Host,
    Requirements,
    memory_fits,
)

SHARING_POLICY = (
    "Tasks that set no cpu/memory share a host; set cpu, memory, GPUs and ports are reserved for a task; "
    "a task asking for all of a host runs alone."
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

    def holders(self, *, cpus: bool = False, memory: bool = False, gpus: bool = False) -> str:
        """The runs that hold what is asked about, for messages: "runs a, b and 2 more"."""
        names = [
            a.run_name or a.job_id[:8]
            for a in self.allocations
            if (not (cpus or memory or gpus))
            or (cpus and a.cpus)
            or (memory and a.memory_gb)
            or (gpus and a.gpus)
        ]
        return runs_phrase(names)


def runs_phrase(names: list[str]) -> str:
    if not names:
        return "other runs"
    shown = ", ".join(names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"run{'s' if len(names) > 1 else ''} {shown}{more}"


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


def misses(req: Requirements, host: Host) -> list[str]:
    """Every reason `host` can never run the task (short codes, most decisive first); [] if it fits."""
    found = []
    if req.backends is not None and host.backend not in req.backends:
        found.append("backend")
    if req.regions is not None and host.region not in req.regions:
        found.append("region")
    if req.fleets is not None and host.fleet not in req.fleets:
        found.append("fleet")
    if req.instances is not None and not any(_is_instance(host, ref) for ref in req.instances):
        found.append("instance")
    if req.needs_nvcc and CAP_NVCC not in host.capabilities:
        found.append("nvcc")
    if req.needs_containers and CAP_CONTAINERS not in host.capabilities:
        found.append("containers")
    if _lacks_python(req, host):
        found.append("python")
    if req.spot_policy == "spot" and not host.spot:
        found.append("spot")
    if req.spot_policy == "on-demand" and host.spot:
        found.append("on-demand")
    if req.max_price is not None and host.price > req.max_price:
        found.append("price")
    if shape_unknown(host):
        return found  # nothing to judge yet: its backend could not be asked (it is unavailable)
    if req.arch and not _arch_matches(req.arch, host.arch):
        found.append("arch")
    if host.cpus < req.cpu.min:
        found.append("cpu")
    if not memory_fits(host.memory_gb, req.memory_gb.min, HOST_MEMORY_SLACK):
        found.append("memory")
    if req.disk_gb is not None and host.disk_gb is not None and host.disk_gb < req.disk_gb.min:
        found.append("disk")
    if req.gpu is not None and req.gpu.count.min > 0:
        matching = [g for g in host.gpus if req.gpu.matches(g)]
        if len(matching) < req.gpu.count.min:
            found.append("gpu")
    return found


def mismatch(req: Requirements, host: Host) -> str | None:
    """Why `host` can never run the task (its most decisive reason), or None if its totals fit."""
    found = misses(req, host)
    return found[0] if found else None


def _is_instance(host: Host, ref: tuple[str | None, str | int]) -> bool:
    fleet, which = ref
    if isinstance(which, int):
        return host.fleet == fleet and host.fleet_index == which
    return which in (host.name, host.hostname)


def _lacks_python(req: Requirements, host: Host) -> bool:
    # A host that did not report its Pythons, or whose uv may download one, is given the benefit.
    missing = req.python is not None and host.pythons is not None and req.python not in host.pythons
    return missing and not host.python_downloads


def _arch_matches(asked: str, arch: str) -> bool:
    asked = asked.lower()
    family = "arm" if arch.lower() in ("aarch64", "arm64") else "x86"
    return asked == family or asked == arch.lower()


def allocate(req: Requirements, usage: HostUsage, job_id: str) -> Allocation | str:
    """Reserve what the task needs on a host whose totals fit; a string says why it is busy now."""
    host = usage.host
    if CAP_QUEUE in host.capabilities:
        return queue_allocation(req, job_id)
    label = host_label(host)
    if usage.held_exclusively:
        return f"{label} is held alone by {usage.holders()}"
    cpus = float(req.cpu.min) if req.cpu_explicit else 0.0
    memory = float(req.memory_gb.min) if req.memory_explicit else 0.0
    exclusive = (req.cpu_explicit and cpus >= host.cpus) or (
        req.memory_explicit and memory >= host.memory_gb * (1 - HOST_MEMORY_SLACK)
    )
    if exclusive and usage.allocations:
        return f"{label} must be free of other tasks (it runs {usage.holders()})"
    free_cpus = host.cpus - usage.reserved_cpus
    if cpus > free_cpus + 1e-9 or (not req.cpu_explicit and free_cpus <= 0):
        return f"{label} has {max(free_cpus, 0):g} of {host.cpus} CPUs free ({usage.holders(cpus=True)})"
    free_memory = host.memory_gb - usage.reserved_memory_gb
    # Strict, unlike the totals: slack for what MemTotal leaves out lets a task have all of a host (then
    # it is alone there), never more than what other tasks left.
    if (memory > free_memory + 1e-9 and not exclusive) or (
        not req.memory_explicit and free_memory <= host.memory_gb * HOST_MEMORY_SLACK
    ):
        return (
            f"{label} has {max(free_memory, 0):.0f}GB of {host.memory_gb:.0f}GB memory free "
            f"({usage.holders(memory=True)})"
        )
    busy_ports = sorted(set(req.ports) & usage.used_ports)
    if busy_ports:
        holders = [a.run_name or a.job_id[:8] for a in usage.allocations if busy_ports[0] in a.ports]
        return f"port {busy_ports[0]} on {label} is held by {runs_phrase(holders)}"
    gpus: tuple[int, ...] = ()
    if req.gpu is not None and req.gpu.count.min > 0:
        used = usage.used_gpus
        free_gpus = sorted(g.index for g in host.gpus if req.gpu.matches(g) and g.index not in used)
        want = int(req.gpu.count.min)
        if len(free_gpus) < want:
            return (
                f"{label} has {len(free_gpus)} matching GPU{'s' if len(free_gpus) != 1 else ''} free, "
                f"the task needs {want} (the others are held by {usage.holders(gpus=True)})"
            )
        gpus = tuple(free_gpus[:want])
    return Allocation(
        job_id=job_id,
        cpus=cpus,
        memory_gb=memory,
        gpus=gpus,
        ports=tuple(req.ports),
        exclusive=exclusive,
        cpu_limit=_cap(req.cpu.max, host.cpus) if req.cpu_explicit else None,
        memory_limit_gb=_cap(req.memory_gb.max, None) if req.memory_explicit else None,
    )


def queue_allocation(req: Requirements, job_id: str) -> Allocation:
    # What the backend's queue is asked for: the minimum of each range (a queue allocates exact amounts).
    gpus = int(req.gpu.count.min) if req.gpu is not None else 0
    return Allocation(
        job_id=job_id, cpus=float(req.cpu.min), memory_gb=float(req.memory_gb.min), gpus=tuple(range(gpus))
    )


def _cap(asked_max: float | None, host_total: float | None) -> float | None:
    if asked_max is None:
        return None
    return float(min(asked_max, host_total)) if host_total is not None else float(asked_max)


def for_project(usages: Iterable[HostUsage], project_id: str) -> list[HostUsage]:
    """The hosts a run of the project may use: every project's (local), and its own fleets'."""
    return [u for u in usages if u.host.project_id is None or u.host.project_id == project_id]


def offers(req: Requirements, usages: Iterable[HostUsage]) -> list[Offer]:
    """Hosts whose totals fit, cheapest first; busy and unavailable ones after the available ones."""
    result = []
    for usage in usages:
        if misses(req, usage.host):
            continue
        if not usage.host.available:
            result.append(Offer(usage.host, "unavailable", usage.host.unavailable_reason))
            continue
        outcome = allocate(req, usage, "plan")
        if isinstance(outcome, str):
            result.append(Offer(usage.host, "busy", outcome))
        else:
            result.append(Offer(usage.host, "available", usage.host.note))
    order = {"available": 0, "busy": 1, "unavailable": 2}
    return sorted(result, key=lambda o: (order[o.availability], o.host.price))


def misfit_offers(req: Requirements, usages: Iterable[HostUsage]) -> list[Offer]:
    """Queue hosts (Slurm partitions) the task can never fit, each with why: a plan lists them after the
    offers, so a user sees which partition is too small and by how much. Hosts left out by the task's own
    backend or region filter are not listed."""
    result = []
    for usage in usages:
        host = usage.host
        if CAP_QUEUE not in host.capabilities:
            continue
        found = misses(req, host)
        if found and not {"backend", "region"} & set(found):
            result.append(Offer(host, "no fit", misfit_note(req, found, host)))
    return sorted(result, key=lambda o: o.host.price)


def decide(
    req: Requirements,
    usages: list[HostUsage],
    job_id: str,
    blocked: dict[str, str] | None = None,
) -> Decision:
    """Place on the cheapest host that fits now; else say what it waits for, or why it never fits.

    `blocked` maps hosts an earlier waiting task is queued for to that task's run name: later tasks may
    not take them, so the queue stays first-come-first-served and a big task is not starved by a stream
    of small ones.
    """
    blocked = blocked or {}
    fitting = [u for u in usages if not misses(req, u.host) and u.host.available]
    if not fitting:
        return Decision(impossible_reason=no_offer_message(req, [u.host for u in usages]))
    reasons = []
    for usage in sorted(fitting, key=lambda u: u.host.price):
        if usage.host.id in blocked:
            reasons.append(
                f"{host_label(usage.host)} is promised to run {blocked[usage.host.id]}, which waits ahead"
            )
            continue
        outcome = allocate(req, usage, job_id)
        if isinstance(outcome, Allocation):
            return Decision(allocation=outcome, host=usage.host)
        reasons.append(outcome)
    return Decision(wait_reason="; ".join(reasons))


def no_offer_message(req: Requirements, hosts: list[Host]) -> str:
    """Why no host fits, naming what was asked and what the closest hosts have."""
    if not hosts:
        return "No offer fits: no backend has any host."
    found = [(misses(req, h), h) for h in hosts]
    on_paper = [h for m, h in found if not m]
    if on_paper:  # hosts fit on paper but none is available: why they are not is what helps
        notes = "; ".join(f"{host_label(h)}: {h.unavailable_reason or 'unavailable'}" for h in on_paper)
        return f"No host is available now ({notes})."
    # Closest first: the fewest misses, then the cheapest.
    ranked = sorted((pair for pair in found if pair[0]), key=lambda p: (len(p[0]), p[1].price))
    return no_offer_sentence(req, ranked[0][0], [h for _, h in ranked[:3]])
