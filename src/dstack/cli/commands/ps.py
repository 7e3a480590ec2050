"""dstack ps: the runs, newest first."""

from __future__ import annotations

import argparse
import time
from typing import Any

from dstack.cli.argtypes import positive_number


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="show finished runs too")
    parser.add_argument("-w", "--watch", action="store_true", help="refresh every 2 seconds (Ctrl+C exits)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show where runs run (e.g. the Slurm job) and why they ended",
    )
    parser.add_argument(
        "-n", "--limit", type=positive_number, default=None, help="show at most this many runs"
    )
    parser.add_argument("--project", help="the project (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    from dstack.api.config import load_config
    from dstack.cli.connection import get_client
    from dstack.cli.output import note, table

    if args.project is None and load_config().default() is None:
        # Nothing has run yet: an empty list is the truth, and no server needs starting to say so.
        table(*_table([], args.verbose))
        note("No dstack server is configured yet; the first dstack run starts one", dim=True)
        return 0
    client = get_client(args.project, start_embedded=False)
    if not args.watch:
        runs = client.list_runs(all=args.all, limit=args.limit)
        table(*_table(runs, args.verbose))
        return 0
    try:
        while True:
            runs = client.list_runs(all=args.all, limit=args.limit)
            print("\x1b[2J\x1b[H", end="")
            table(*_table(runs, args.verbose))
            time.sleep(2)
    except KeyboardInterrupt:
        return 0


def _table(runs: list[dict[str, Any]], verbose: bool) -> tuple[list[str], list[list[str]]]:
    headers = ["RUN", "CONFIGURATION", "BACKEND", "RESOURCES", "PRICE", "STATUS", "SUBMITTED"]
    if verbose:
        headers += ["INSTANCE", "ERROR"]
    rows = []
    for run in runs:
        row = [
            run["name"],
            run.get("configuration_path") or "-",
            run.get("backend") or "-",
            run.get("resources") or "-",
            f"${run['price']:g}" if run.get("price") is not None else "-",
            _status(run),
            ago(run["submitted_at"]),
        ]
        if verbose:
            row += [run.get("instance") or "-", _error(run)]
        rows.append(row)
        if verbose:
            rows += [_node_row(node, run) for node in run.get("nodes") or []]
    return headers, rows


def _node_row(node: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """A multi-node run's node under its run: its rank, host and status (and why it ended)."""
    rank = node["rank"]
    status = str(node["status"])
    if status == "failed" and node.get("exit_code"):
        status = f"failed ({node['exit_code']})"
    label = f"  node {rank}" + (" (master)" if rank == 0 else "")
    error = "" if node["status"] == "done" else str(node.get("termination_message") or "")
    return [label, "", run.get("backend") or "-", "", "", status, "", node.get("hostname") or "-", error]


def _status(run: dict[str, Any]) -> str:
    status = str(run["status"])
    if run.get("next_start_at") and status in ("pending", "submitted"):
        from dstack.config.cron import format_utc

        return f"scheduled (next start {format_utc(run['next_start_at'])})"
    if status == "failed" and run.get("exit_code"):
        return f"failed ({run['exit_code']})"
    return status


def _error(run: dict[str, Any]) -> str:
    if run["status"] == "done":
        return ""
    return str(run.get("termination_message") or run.get("status_message") or "")


def ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    if seconds < 60:
        return f"{seconds} sec ago" if seconds else "now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} hour{'s' if seconds >= 7200 else ''} ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
