"""The scheduler's sentences: what a host has, why nothing fits, how a task will share its host. Pure."""

from __future__ import annotations

from collections.abc import Callable

from dstack.server.scheduler.model import HOST_MEMORY_SLACK, Allocation, Host, Requirements, format_gb


def host_label(host: Host) -> str:
    if host.backend == "local":
        return "this machine"
    if host.backend == "slurm":
        # Slurm offers are named CLUSTER[/PARTITION[/SHAPE]] (see backends/slurm/inventory.py).
        parts = host.name.split("/")
        if len(parts) >= 2:
            return f"partition {parts[1]} of cluster {parts[0]}"
        return f"cluster {parts[0]}"
    return f"host {host.name}"


def shape_unknown(host: Host) -> bool:
    """An unavailable host whose backend could not say what it has (an unreachable cluster)."""
    return not host.available and host.cpus == 0 and host.memory_gb == 0


def describe_resources(host: Host) -> str:
    if shape_unknown(host):
        return "unknown"
    parts = [_cpus(host.cpus), f"{host.memory_gb:.0f}GB memory"]
    if host.gpus:
        names: dict[str, int] = {}
        for g in host.gpus:
            label = f"{g.short_name} ({g.memory_gb:.0f}GB)"
            names[label] = names.get(label, 0) + 1
        parts.append(", ".join(f"{n}x{label}" for label, n in names.items()))
    else:
        parts.append("no GPU")
    return ", ".join(parts)


def describe_host(host: Host) -> str:
    return f"{host_label(host)} has {describe_resources(host)}"


def describe_allocation(host: Host, allocation: Allocation) -> str:
    """What a placed task holds, for `ps`: what it reserved, else the host's amount, marked shared."""
    if not allocation.cpus and not allocation.memory_gb:
        parts = [f"{host.cpus}xCPU", f"{host.memory_gb:.0f}GB (shared)"]
    else:
        cpus = f"{allocation.cpus:g}xCPU" if allocation.cpus else f"{host.cpus}xCPU (shared)"
        memory = (
            format_gb(allocation.memory_gb) if allocation.memory_gb else f"{host.memory_gb:.0f}GB (shared)"
        )
        parts = [cpus, memory]
    if allocation.gpus:
        by_index = {g.index: g for g in host.gpus}
        gpu = by_index.get(allocation.gpus[0])
        label = f"{gpu.short_name} ({gpu.memory_gb:.0f}GB)" if gpu else "GPU"
        parts.append(f"{len(allocation.gpus)}x{label}")
    return ", ".join(parts)


# -- no offer --------------------------------------------------------------------------------------------

_POLICY_SENTENCES: dict[str, Callable[[Requirements], str]] = {
    "backend": lambda r: f"No offer is from backend {', '.join(r.backends or ())}",
    "region": lambda r: f"No offer is in region {', '.join(r.regions or ())}",
    "fleet": lambda r: (
        f"No offer is in fleet {', '.join(r.fleets or ())} (a fleet's hosts are offers once it is applied "
        "with dstack apply)"
    ),
    "instance": lambda r: f"No offer is instance {', '.join(_instance_names(r))}",
    "nvcc": lambda r: "No offer has the CUDA compiler (nvcc: true needs nvcc on the host)",
    "containers": lambda r: "No offer can run containers (an image task needs Docker on its host)",
    "python": lambda r: f"No offer has Python {r.python} (not installed, and uv may not download it there)",
    "spot": lambda r: "No offer is a spot instance",
    "on-demand": lambda r: "No offer is on-demand",
    "price": lambda r: f"No offer costs at most ${r.max_price:g}/h",
    "arch": lambda r: f"No offer has {_article(r.arch or '')} {r.arch} CPU",
}


def _instance_names(req: Requirements) -> list[str]:
    return [f"{fleet}[{which}]" if fleet else str(which) for fleet, which in req.instances or ()]


def _gpu_phrase(req: Requirements) -> str:
    gpu = req.gpu
    assert gpu is not None
    count = int(gpu.count.min)
    words = []
    if gpu.vendor:
        words.append("AMD" if gpu.vendor.lower() == "amd" else "NVIDIA")
    if gpu.names:
        words.append(" or ".join(gpu.names))
    memory = f" with {gpu.memory_gb.describe('GB')} memory" if gpu.memory_gb is not None else ""
    if count == 1:
        named = " ".join(words)
        return f"{_article(named or 'GPU')} {named + ' ' if named else ''}GPU{memory}"
    return f"{count} {' '.join(words) + ' ' if words else ''}GPUs{memory}"


_RESOURCE_PHRASES: dict[str, Callable[[Requirements], str]] = {
    "cpu": lambda r: f"{r.cpu.describe()} CPUs",
    "memory": lambda r: f"{r.memory_gb.describe('GB')} memory",
    "disk": lambda r: f"{r.disk_gb.describe('GB') if r.disk_gb else ''} free disk",
    "gpu": _gpu_phrase,
}


def no_offer_sentence(req: Requirements, misses: list[str], closest: list[Host]) -> str:
    """ "No offer has an A100 GPU: this machine has 2 CPUs, 24GB memory, 2xH100 (80GB)." """
    first = misses[0]
    policy = _POLICY_SENTENCES.get(first)
    if first == "containers" and closest and all(h.backend == "slurm" for h in closest):
        clusters = ", ".join(sorted({h.region for h in closest}))
        return (
            f"No offer can run containers: Slurm cluster {clusters} declares no container runtime "
            "(container_runtime in the server's config.yml)."
        )
    if policy is not None:
        head = policy(req)
    else:
        phrases = [_RESOURCE_PHRASES[m](req) for m in misses if m in _RESOURCE_PHRASES]
        head = "No offer has " + " and ".join(phrases)
    have = "; ".join(describe_host(h) for h in closest)
    return f"{head}: {have}."


_MISFIT_POLICY: dict[str, Callable[[Requirements, Host], str]] = {
    "containers": lambda r, h: (
        "runs no containers (its cluster declares no container runtime)"
        if h.backend == "slurm"
        else "runs no containers"
    ),
    "python": lambda r, h: f"has no Python {r.python}",
    "spot": lambda r, h: "is not spot",
    "on-demand": lambda r, h: "is not on-demand",
    "price": lambda r, h: f"costs more than ${r.max_price:g}/h",
    "arch": lambda r, h: f"has no {r.arch} CPU",
}


def misfit_note(req: Requirements, misses: list[str], host: Host) -> str:
    """Why one host can never run the task, for its row in a plan: "needs 8 CPUs; it has 4 CPUs, ..."."""
    policy = _MISFIT_POLICY.get(misses[0])
    if policy is not None:
        return policy(req, host)
    phrases = [_RESOURCE_PHRASES[m](req) for m in misses if m in _RESOURCE_PHRASES]
    return f"the task needs {' and '.join(phrases)}; it has {describe_resources(host)}"


def _cpus(count: float) -> str:
    return f"{count:g} CPU{'' if count == 1 else 's'}"


def _article(word: str) -> str:
    # By sound: "an A100", "an H100", "an MI300X", "an x86", but "a T4", "a V100", "a GPU".
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"


# -- how a task shares its host ----------------------------------------------------------------------


def placement_note(req: Requirements, host: Host) -> str:
    """One sentence for the plan: what the task reserves on `host`, what caps it, and how."""
    label = host_label(host)
    if host.backend == "slurm":
        return _queue_note(req, label)
    gpus = ""
    if req.gpu is not None and req.gpu.count.min > 0:
        count = int(req.gpu.count.min)
        gpus = f"; it holds {count} GPU{'s' if count > 1 else ''} of its own and sees only those"
    if not req.cpu_explicit and not req.memory_explicit:
        return f"Sets no cpu or memory: shares {label} with other tasks, uncapped{gpus}."
    if (req.cpu_explicit and req.cpu.min >= host.cpus) or (
        req.memory_explicit and req.memory_gb.min >= host.memory_gb * (1 - HOST_MEMORY_SLACK)
    ):
        return f"Asks for all of {label}: runs alone there{gpus}."
    reserved = []
    caps = []
    if req.cpu_explicit:
        reserved.append(_cpus(req.cpu.min))
        if req.cpu.max is not None:
            caps.append(_cpus(min(req.cpu.max, host.cpus)))
    if req.memory_explicit:
        reserved.append(f"{format_gb(req.memory_gb.min)} memory")
        if req.memory_gb.max is not None:
            caps.append(f"{format_gb(req.memory_gb.max)} memory")
    text = f"Reserves {' and '.join(reserved)} on {label}"
    if caps:
        if req.needs_containers:
            how = "enforced by the container"
        elif host.limits:
            how = f"enforced with {host.limits}"
        else:
            how = f"not enforced on {label}: its agent cannot use cgroups"
        text += f", capped at {' and '.join(caps)} ({how})"
    return text + gpus + "."


def _queue_note(req: Requirements, label: str) -> str:
    asked = [_cpus(req.cpu.min), f"{format_gb(req.memory_gb.min)} memory"]
    if req.gpu is not None and req.gpu.count.min > 0:
        count = int(req.gpu.count.min)
        asked.append(f"{count} GPU{'s' if count > 1 else ''}")
    return (
        f"Submitted as one Slurm job to {label}, asking for {', '.join(asked)}: Slurm's queue decides when "
        "and on which node it starts, and the task sees exactly what Slurm allocates."
    )
