"""Gang placement of a multi-node run: every node at once, on hosts that reach each other, or none. Pure.

Hosts reach each other when they share `Host.cluster`: the hosts of one fleet with `placement: cluster`,
or one Slurm partition (its node shapes), where one Slurm job with `--nodes N` takes the nodes. A run's
nodes go on distinct hosts of one cluster (a node is a machine, as in dstack), master (rank 0) on the
cheapest; a queue cluster (Slurm) takes them all on its cheapest shape that fits, as one job its queue
starts whole.

All or none: a run is placed only when every node has a host now. Otherwise it waits as a whole, holding
nothing (and keeping later runs off the hosts it waits for), or, when no cluster could ever hold it, it
cannot be placed, with one sentence per backend saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dstack.server.backends.base import CAP_QUEUE
from dstack.server.scheduler.messages import host_label
from dstack.server.scheduler.model import Allocation, Host, Requirements
from dstack.server.scheduler.placement import HostUsage, allocate, misses, no_offer_message, queue_allocation


@dataclass(frozen=True)
class GangDecision:
    placements: tuple[tuple[Host, Allocation], ...] = ()  # one per node, in rank order
    wait_reason: str | None = None  # a cluster can hold it, but not now
    impossible_reason: str | None = None  # no cluster can hold it
    waits_for: tuple[str, ...] = ()  # the hosts a waiting run would take (later runs keep off them)

    @property
    def placed(self) -> bool:
        return bool(self.placements)


@dataclass(frozen=True)
class GangOffer:
    """A cluster that can hold the run, for the plan: the hosts its nodes take (now, or once free)."""

    hosts: tuple[Host, ...]
    availability: str  # available | busy
    note: str | None = None


@dataclass(frozen=True)
class _Outcome:
    label: str
    placements: tuple[tuple[Host, Allocation], ...] = ()
    busy: str | None = None  # fits on paper, not now: why
    never: str | None = None  # cannot hold the run: why
    hosts: tuple[Host, ...] = ()  # what its nodes would take once free (busy)
    price: float = 0.0


def decide_gang(
    reqs: Sequence[Requirements],
    usages: list[HostUsage],
    job_ids: Sequence[str],
    blocked: dict[str, str] | None = None,
) -> GangDecision:
    """Place every node (reqs[i] for job_ids[i]) in the cheapest cluster that holds them all now."""
    outcomes = [_evaluate(reqs, members, job_ids, blocked or {}) for members in clusters(usages).values()]
    placed = [o for o in outcomes if o.placements]
    if placed:
        return GangDecision(placements=min(placed, key=lambda o: o.price).placements)
    busy = [o for o in outcomes if o.busy is not None]
    if busy:
        waits_for = tuple(h.id for o in busy for h in o.hosts if CAP_QUEUE not in h.capabilities)
        return GangDecision(wait_reason="; ".join(o.busy for o in busy if o.busy), waits_for=waits_for)
    return GangDecision(impossible_reason=no_cluster_message(reqs, usages, outcomes))


def gang_offers(reqs: Sequence[Requirements], usages: list[HostUsage]) -> list[GangOffer]:
    """The clusters that can hold the run, cheapest first, the ones free now before the busy ones."""
    found = []
    for members in clusters(usages).values():
        outcome = _evaluate(reqs, members, [f"plan-{i}" for i in range(len(reqs))], {})
        if outcome.placements:
            found.append((0, outcome.price, GangOffer(tuple(h for h, _ in outcome.placements), "available")))
        elif outcome.busy is not None:
            found.append((1, outcome.price, GangOffer(outcome.hosts, "busy", outcome.busy)))
    return [offer for _, _, offer in sorted(found, key=lambda item: (item[0], item[1]))]


def impossible_message(reqs: Sequence[Requirements], usages: list[HostUsage]) -> str | None:
    """Why no cluster can ever hold the run (None if one can, now or once its hosts are free)."""
    decision = decide_gang(reqs, usages, [f"plan-{i}" for i in range(len(reqs))])
    return decision.impossible_reason


def clusters(usages: list[HostUsage]) -> dict[str, list[HostUsage]]:
    """Hosts that reach each other, by their cluster key (hosts in none are left out)."""
    found: dict[str, list[HostUsage]] = {}
    for usage in usages:
        if usage.host.cluster is not None:
            found.setdefault(usage.host.cluster, []).append(usage)
    return found


def no_cluster_message(
    reqs: Sequence[Requirements], usages: list[HostUsage], outcomes: list[_Outcome] | None = None
) -> str:
    """Why no cluster holds the run: one sentence per backend (or per fleet, partition) that cannot."""
    hosts = [u.host for u in usages]
    count = len(reqs)
    if not any(not misses(req, h) for req in reqs for h in hosts):
        return no_offer_message(reqs[0], hosts)  # not even one node fits anywhere: say what is missing
    if outcomes is None:
        outcomes = [_evaluate(reqs, members, [""] * count, {}) for members in clusters(usages).values()]
    reasons = [f"{o.label} {o.never}" for o in outcomes if o.never]
    seen = set()
    for host in hosts:
        if host.cluster is not None or all(misses(req, host) for req in reqs):
            continue
        reason = _not_a_cluster(host)
        if reason not in seen:
            seen.add(reason)
            reasons.append(reason)
    return f"No offer fits {count} nodes: {'; '.join(reasons) or 'no hosts reach each other'}."


def _not_a_cluster(host: Host) -> str:
    if host.backend == "local":
        return "backend local has one host (this machine)"
    if host.backend == "ssh" and host.fleet:
        return (
            f"fleet {host.fleet} has placement: any (apply it with placement: cluster if its hosts reach "
            "each other)"
        )
    return f"backend {host.backend} cannot run a multi-node task"


def _evaluate(
    reqs: Sequence[Requirements], members: list[HostUsage], job_ids: Sequence[str], blocked: dict[str, str]
) -> _Outcome:
    first = members[0].host
    if CAP_QUEUE in first.capabilities:
        return _evaluate_queue(reqs, members, job_ids)
    label = f"fleet {first.fleet}" if first.fleet else f"cluster {first.cluster}"
    count = len(reqs)
    ordered = sorted(members, key=lambda u: (u.host.price, u.host.fleet_index or 0, u.host.name))
    available = [u for u in ordered if u.host.available]
    unavailable = [u.host for u in ordered if not u.host.available]
    on_paper = _match(reqs, available, lambda i, u: not misses(reqs[i], u.host))
    if on_paper is None:
        fitting = [u for u in available if any(not misses(req, u.host) for req in reqs)]
        text = f"has {_fit(len(fitting), 'host')} a node, the task needs {count}"
        if unavailable:
            text += " (" + "; ".join(_unavailable(h) for h in unavailable[:3]) + ")"
        return _Outcome(label, never=text)
    outcomes: dict[tuple[int, str], Allocation | str] = {}

    def fits_now(index: int, usage: HostUsage) -> bool:
        if usage.host.id in blocked or misses(reqs[index], usage.host):
            return False
        key = (index, usage.host.id)
        if key not in outcomes:
            outcomes[key] = allocate(reqs[index], usage, job_ids[index])
        return isinstance(outcomes[key], Allocation)

    now = _match(reqs, available, fits_now)
    if now is not None:
        placements = []
        for index, usage in enumerate(now):
            allocation = outcomes[(index, usage.host.id)]
            assert isinstance(allocation, Allocation)
            placements.append((usage.host, allocation))
        return _Outcome(label, placements=tuple(placements), price=sum(h.price for h, _ in placements))
    free = sum(1 for u in available if any(fits_now(i, u) for i in range(count)))
    why = []
    for usage in available:
        if usage.host.id in blocked:
            why.append(
                f"{host_label(usage.host)} is promised to run {blocked[usage.host.id]}, which waits ahead"
            )
            continue
        reasons = [o for (i, h), o in outcomes.items() if h == usage.host.id and isinstance(o, str)]
        if reasons and not any(fits_now(i, usage) for i in range(count)):
            why.append(reasons[0])
    text = f"{label} has {free} of the {count} hosts the task needs free now"
    if why:
        text += f" ({'; '.join(why[:3])})"
    return _Outcome(
        label, busy=text, hosts=tuple(u.host for u in on_paper), price=sum(u.host.price for u in on_paper)
    )


def _evaluate_queue(
    reqs: Sequence[Requirements], members: list[HostUsage], job_ids: Sequence[str]
) -> _Outcome:
    first = members[0].host
    label = host_label(first)
    if any(req != reqs[0] for req in reqs):
        return _Outcome(
            label,
            never="runs the nodes of a run as one Slurm job of one shape, and these node groups ask for "
            "different resources",
        )
    req = reqs[0]
    fitting = sorted(
        (u.host for u in members if not misses(req, u.host) and u.host.available), key=lambda h: h.price
    )
    nodes = sum(h.node_count for h in fitting)
    if nodes < len(reqs):
        text = f"has {_fit(nodes, 'node')} a node of the task, it needs {len(reqs)}"
        down = [h for h in (u.host for u in members) if not h.available and not misses(req, h)]
        if down:
            text += " (" + "; ".join(_unavailable(h) for h in down[:3]) + ")"
        return _Outcome(label, never=text)
    host = fitting[0]
    placements = tuple((host, queue_allocation(req, job_id)) for job_id in job_ids)
    return _Outcome(label, placements=placements, price=host.price * len(reqs))


def _match(
    reqs: Sequence[Requirements], usages: list[HostUsage], fits: Callable[[int, HostUsage], bool]
) -> list[HostUsage] | None:
    """A distinct host for every node (node i where fits(i, host)), or None. Augmenting paths (Kuhn), free
    hosts tried first: the first nodes take the first hosts they fit, so the master lands on the
    cheapest, and a node moves only to make room for one that fits nowhere else."""
    holder: dict[int, int] = {}  # host position -> node index

    def assign(index: int, seen: set[int]) -> bool:
        options = [p for p, usage in enumerate(usages) if p not in seen and fits(index, usage)]
        # A free host first; only then move an earlier node to another host to make room.
        for position in sorted(options, key=lambda p: p in holder):
            seen.add(position)
            if position not in holder or assign(holder[position], seen):
                holder[position] = index
                return True
        return False

    for index in range(len(reqs)):
        if not assign(index, set()):
            return None
    by_node = {index: position for position, index in holder.items()}
    return [usages[by_node[index]] for index in range(len(reqs))]


def _fit(count: int, noun: str) -> str:
    """ "1 host that fits", "2 nodes that fit" """
    return f"{count} {noun} that fits" if count == 1 else f"{count} {noun}s that fit"


def _unavailable(host: Host) -> str:
    return f"{host_label(host)} is unavailable: {(host.unavailable_reason or 'not ready').rstrip('.')}"
