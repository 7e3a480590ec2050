"""A run's ports on 127.0.0.1 while the CLI is attached (SPEC §7): the check before submission, the
forward during the attach, and `dstack attach -p`.

The general path is CLI listener -> WebSocket to the server -> the host's agent -> the task's port, so it
works wherever the CLI reaches the server. See `reserve` for the shortcut when the task runs here.
"""

from __future__ import annotations

from typing import Any

from dstack.api.client import Client
from dstack.cli.errors import CLIError
from dstack.cli.ports.reserve import Forward, check_free_here, reserve, same_machine


def reserve_for_run(
    client: Client, ports: list[dict[str, Any]], plan: dict[str, Any], *, detach: bool = False
) -> list[Forward]:
    """Before submission: check and hold every local port the run will be reached on.

    A detached run forwards nothing, so only the ports its task will listen on here are checked.
    """
    if not ports:
        return []
    offers = plan.get("offers") or []
    local_task = same_machine(client.url, (o["backend"] for o in offers))
    # A task of ours holding the port makes the host busy (the plan says so, and the run waits); only
    # when the host is free now is a busy port somebody else's program, which the task would trip over.
    check_task_ports = local_task and offers[0].get("availability") == "available"
    if detach:
        if check_task_ports:
            check_free_here([int(p["container_port"]) for p in ports])
        return []
    return reserve(ports, local_task=local_task, check_task_ports=check_task_ports)


def reserve_for_attach(client: Client, run: dict[str, Any], cli_ports: list[str]) -> list[Forward]:
    """For `dstack attach`: the run's own mappings with `-p` ones over them, held like `dstack run` does."""
    from dstack.core.statuses import RunStatus

    if RunStatus(run["status"]).is_finished:
        return []
    spec = run.get("spec") or {}
    ports = _merge(run["name"], spec.get("ports") or [], cli_ports)
    if not ports:
        return []
    backends = [run["backend"]] if run.get("backend") else [o["backend"] for o in client.plan(spec)["offers"]]
    return reserve(ports, local_task=same_machine(client.url, backends), check_task_ports=False)


def follow_with_ports(
    client: Client, name: str, forwards: list[Forward], tail: int | None = None, node: int | None = None
) -> int:
    """Stream the run's output (dstack.cli.follow) while its ports are forwarded; the exit code at the end."""
    from dstack.cli.follow import Follower

    forwarder = None
    if forwards:
        from dstack.cli.ports.forwarder import Forwarder

        forwarder = Forwarder(client, name, forwards)
        forwarder.start()
    try:
        return Follower(client, name, tail=tail, node=node).follow()
    finally:
        if forwarder is not None:
            forwarder.stop()
        else:
            for forward in forwards:
                forward.release()


def _merge(run_name: str, declared: list[dict[str, Any]], cli_ports: list[str]) -> list[dict[str, Any]]:
    from dstack.config import merge_ports
    from dstack.config.ports import PortMapping

    mappings = [PortMapping.model_validate(p) for p in declared]
    merged = merge_ports(mappings, cli_ports)
    known = {m.container_port for m in mappings}
    for mapping in merged:
        if mapping.container_port not in known:
            listed = ", ".join(str(p) for p in sorted(known)) or "none"
            raise CLIError(
                f"Run {run_name} does not declare port {mapping.container_port} (its ports: {listed}); "
                "only those can be forwarded"
            )
    return [m.model_dump(mode="json") for m in merged]
