"""The plan of a run (`POST /runs/plan`): what it asks for, the offers that fit it now, and why none does.

A single-node run's offers are hosts (and Slurm partitions it can never fit, with why); a multi-node run's
are clusters that can hold every node at once (scheduler/gang.py), with one sentence per backend that
cannot.
"""

from __future__ import annotations

import time
from typing import Any

from dstack.config.cron import next_start
from dstack.server.backends.agent_client import AgentError
from dstack.server.backends.registry import UnknownHost
from dstack.server.context import ServerContext
from dstack.server.scheduler import gang, placement
from dstack.server.scheduler.model import Host
from dstack.server.scheduler.placement import HostUsage
from dstack.server.schemas import RunSpec
from dstack.server.services import code as code_service
from dstack.server.services import runs, specs
from dstack.server.services.projects import Project
from dstack.server.services.usage import load_usages

PLAN_BUILD_LOOKUPS = 10  # hosts asked whether they have a run's build, best offers first


async def plan(
    ctx: ServerContext, project: Project, spec: RunSpec, *, code_hash: str | None = None
) -> dict[str, Any]:
    checked = specs.check(spec)
    specs.check_size(spec)
    refusal = checked.refusal or await runs.missing_secrets(ctx, project, checked)
    hosts = [h for h in await ctx.backends.hosts() if h.project_id in (None, project.id)]
    run_name = spec.run_name
    async with ctx.db.read() as session:  # one read for all: each is a hop to a reader thread
        usages = await load_usages(session, hosts)
        if run_name is None:
            run_name = await runs.free_name(session, project)
        has_code = code_hash is not None and await code_service.stored(session, ctx, project, code_hash)
    shown, offered = _gang_plan(checked, usages) if checked.nodes > 1 else _single_plan(checked, usages)
    refusal = refusal or await _missing_build(ctx, spec, offered)
    return {
        "project": project.name,
        "run_name": run_name,
        "configuration_path": spec.configuration_path,
        "requirements": checked.describe(),
        "nodes": checked.nodes,
        **shown,
        "refusal": refusal,
        "priority": checked.priority,
        "schedule": _schedule_json(checked, time.time()),
        **({"has_code": has_code} if code_hash is not None else {}),
    }


def _single_plan(checked: specs.CheckedSpec, usages: list[HostUsage]) -> tuple[dict[str, Any], list[Host]]:
    """(the plan's offers and messages, the hosts offered, best first)."""
    offers = placement.offers(checked.requirements, usages)
    misfits = placement.misfit_offers(checked.requirements, usages)
    hosts = [u.host for u in usages]
    shown = {
        "sharing": placement.placement_note(checked.requirements, offers[0].host)
        if offers
        else placement.SHARING_POLICY,
        # The offers that fit, then queue hosts (Slurm partitions) that never can, each with why.
        "offers": [_offer_json(o) for o in [*offers[:50], *misfits[:10]]],
        "total_offers": len(offers),
        "no_offer_message": None if offers else placement.no_offer_message(checked.requirements, hosts),
        # Set when offers fit but none is free now: without retry the run would fail at once.
        "busy_message": f"No offer is free now: {offers[0].note}"
        if offers and all(o.availability != "available" for o in offers)
        else None,
        "notes": list(checked.notes) + placement_notes(checked, offers[0].host if offers else None),
    }
    return shown, [o.host for o in offers]


def _gang_plan(checked: specs.CheckedSpec, usages: list[HostUsage]) -> tuple[dict[str, Any], list[Host]]:
    """A multi-node run's plan: one offer per cluster that can hold every node (the hosts its nodes take);
    and each cluster's master host, best first."""
    reqs = checked.node_requirements
    found = gang.gang_offers(reqs, usages)
    first = found[0].hosts[0] if found else None
    nodes = len(reqs)
    sharing = (
        f"Each of the {nodes} nodes runs on its own host of one cluster (a fleet with placement: cluster, "
        f"or one Slurm job with --nodes {nodes}); "
        + (placement.placement_note(reqs[0], first) if first else placement.SHARING_POLICY)
    )
    shown = {
        "sharing": sharing,
        "offers": [_gang_offer_json(o, nodes) for o in found[:50]],
        "total_offers": len(found),
        "no_offer_message": None if found else gang.impossible_message(reqs, usages),
        "busy_message": f"No offer is free now: {found[0].note}"
        if found and all(o.availability != "available" for o in found)
        else None,
        "notes": list(checked.notes) + placement_notes(checked, first),
    }
    return shown, [o.hosts[0] for o in found]


async def _missing_build(ctx: ServerContext, spec: RunSpec, hosts: list[Host]) -> str | None:
    """SPEC §5: without --build, a run whose build is not cached stops before running; the plan says so
    when every offered host (best first) says it has no such build."""
    if not spec.build or spec.build_policy != "use-build" or spec.build_inputs is None or not hosts:
        return None
    python = spec.python if spec.image is None else None
    for host in hosts[:PLAN_BUILD_LOOKUPS]:
        try:
            agent = ctx.backends.agent(host.id)
            if await agent.has_build(python=python, image=spec.image, inputs=spec.build_inputs):
                return None
        except (AgentError, UnknownHost):
            # No agent to ask (a queue backend such as Slurm starts one per job), or it does not answer:
            # the plan cannot tell, so the run goes on and the host says at start (`build not found`).
            return None
    advice = specs.build_advice(spec.configuration_path)
    return f"This configuration's build is not cached on any host that fits; {advice}"


def _gang_offer_json(offer: gang.GangOffer, nodes: int) -> dict[str, Any]:
    host = offer.hosts[0]
    if len(set(offer.hosts)) == 1:  # a queue host: one Slurm job takes the nodes
        instance = f"{nodes}x {host.name}"
    else:
        instance = ", ".join(h.name for h in offer.hosts)
    return {
        "backend": host.backend,
        "region": host.region,
        "instance": instance,
        "resources": placement.describe_resources(host),
        "spot": host.spot,
        "price": sum(h.price for h in offer.hosts),
        "availability": offer.availability,
        "note": offer.note if offer.availability != "available" else host.note,
    }


def placement_notes(checked: specs.CheckedSpec, host: Host | None) -> list[str]:
    """What the plan says about the best offer's host for this task (e.g. what it cannot measure)."""
    if host is None or checked.profile.utilization_policy is None or checked.profile.resources.gpu is None:
        return []
    if host.gpu_metrics is not False:
        return []
    return [
        f"utilization_policy cannot be measured on {placement.host_label(host)}: nvidia-smi does not answer "
        "there, so the policy has no effect on it."
    ]


def _schedule_json(checked: specs.CheckedSpec, now: float) -> dict[str, Any] | None:
    cron = checked.schedule
    if cron is None:
        return None
    return {"cron": cron, "next_start": next_start(cron, now)}


def _offer_json(offer: placement.Offer) -> dict[str, Any]:
    host = offer.host
    return {
        "backend": host.backend,
        "region": host.region,
        "instance": host.name,
        "resources": placement.describe_resources(host),
        "spot": host.spot,
        "price": host.price,
        "availability": offer.availability,
        "note": offer.note,
    }
