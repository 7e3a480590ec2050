"""`dstack apply -f fleet.dstack.yml` (plan, confirm, apply, the hosts as they came up) and the tables of
`dstack fleet`.

The identity files the fleet names are read here, on the user's machine (`~` and paths relative to the
configuration's folder work as they do for tasks), and sent to the server, which connects with them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dstack.cli.connection import get_client
from dstack.cli.errors import CLIError
from dstack.cli.output import confirm, note, table

MAX_KEY_BYTES = 64 * 1024
_ACTIONS = {
    "add": "add",
    "keep": "keep (unchanged)",
    "retry": "connect again",
    "update": "update (its SSH settings changed)",
    "remove": "remove",
}


def apply_fleet(args: argparse.Namespace) -> int:
    from dstack.config.fleet import load_fleet_configuration

    path = Path(args.file)
    configuration = load_fleet_configuration(path, display_name=args.file)
    keys = _identity_files(configuration, path)
    data = configuration.model_dump(mode="json")
    client = get_client(args.project)
    plan = client.plan_fleet(data)
    _print_plan(plan)
    busy = [h for h in plan["hosts"] if h["action"] == "remove" and h.get("runs")]
    if busy and not args.yes:
        runs = sorted({run for h in busy for run in h["runs"]})
        note(f"The hosts that leave the fleet run {', '.join(runs)}: confirming stops them")
    if not args.yes and not confirm("Apply the fleet?"):
        note("Nothing was changed")
        return 0
    fleet = client.apply_fleet(data, keys, force=True)
    print_hosts(fleet["hosts"], title=f"Fleet {fleet['name']}")
    failed = [h for h in fleet["hosts"] if h["status"] != "ready"]
    for host in failed:
        message = host["status_message"] or host["status"]
        hostname = host["name"].rsplit(":", 1)[0]
        note(message if hostname in message else f"{host['name']}: {message}")
    if failed:
        ready = len(fleet["hosts"]) - len(failed)
        raise CLIError(
            f"{len(failed)} of {len(fleet['hosts'])} hosts of fleet {fleet['name']} are not ready "
            f"({ready} ready); fix what is said above and apply the fleet again"
        )
    return 0


def _identity_files(configuration: Any, path: Path) -> dict[str, bytes]:
    """{identity_file as written: the key's bytes} for every host and jump host."""
    keys: dict[str, bytes] = {}
    for host in configuration.hosts():
        for endpoint, where in ((host, ("ssh_config", "hosts", host.index)), (host.proxy_jump, None)):
            if endpoint is None:
                continue
            name = endpoint.identity_file
            if name is None:
                location = _where(configuration, where or ("ssh_config",))
                raise CLIError(
                    f"{location}Host {endpoint.address} has no identity_file: dstack connects with keys "
                    "only; set ssh_config.identity_file (or the host's own)"
                )
            if name in keys:
                continue
            key_path = Path(name).expanduser()
            if not key_path.is_absolute():
                key_path = path.absolute().parent / key_path
            try:
                data = key_path.read_bytes()[: MAX_KEY_BYTES + 1]
            except FileNotFoundError:
                raise CLIError(
                    f"The identity file {name} of host {endpoint.address} does not exist"
                ) from None
            except OSError as e:
                raise CLIError(f"The identity file {name} cannot be read: {e.strerror or e}") from None
            if len(data) > MAX_KEY_BYTES or b"PRIVATE KEY" not in data:
                raise CLIError(
                    f"The identity file {name} is not a private key (give the key, not the .pub file)"
                )
            keys[name] = data
    return keys


def _where(configuration: Any, path: tuple[Any, ...]) -> str:
    location = configuration.location_of(*path)
    if location is None or location.line is None:
        return ""
    return f"{location.file}:{location.line}:{location.column}: "


def _print_plan(plan: dict[str, Any]) -> None:
    rows = []
    for host in plan["hosts"]:
        action = _ACTIONS.get(host["action"], host["action"])
        if host.get("runs"):
            action += f" (runs {', '.join(host['runs'])})"
        rows.append([host["name"], host.get("user") or "", action])
    verb = "update" if plan["exists"] else "create"
    table(["HOST", "USER", "ACTION"], rows, stream=sys.stderr, title=f"Fleet {plan['name']} ({verb})")
    sys.stderr.write("\n")


def print_hosts(hosts: list[dict[str, Any]], *, title: str | None = None, fleet_column: bool = False) -> None:
    headers = ["FLEET"] if fleet_column else []
    headers += ["HOST", "STATUS", "RESOURCES", "DISK", "RUNS"]
    rows = []
    for host in hosts:
        row = [host["region"]] if fleet_column else []
        runs = [run["name"] for run in host["runs"]]
        status = host["status"]
        if status == "ready":
            status = "busy" if runs or host.get("other_projects_runs") else "idle"
        elif host.get("status_message"):
            status = f"{status}: {host['status_message']}"
        if host.get("other_projects_runs"):
            runs.append(f"{host['other_projects_runs']} of other projects")
        disk = f"{host['disk_free_gb']:.0f}GB free" if host.get("disk_free_gb") is not None else "-"
        resources = host.get("resources") if host.get("cpus") else None
        row += [host["name"], status, resources or "-", disk, ", ".join(runs) or "-"]
        rows.append(row)
    table(headers, rows, title=title)
