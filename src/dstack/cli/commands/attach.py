"""dstack attach: follow a running task again: its output (and, with ports, its forwarded ports)."""

from __future__ import annotations

import argparse

from dstack.cli.argtypes import add_node_flag, whole_number


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_name", metavar="RUN", help="the run's name")
    parser.add_argument(
        "-p",
        "--port",
        action="append",
        default=[],
        metavar="L:N",
        help="forward task port N to local port L (repeatable)",
    )
    parser.add_argument(
        "--tail", type=whole_number, metavar="N", help="start with the last N lines (default: all output)"
    )
    add_node_flag(parser)
    parser.add_argument("--project", help="the project (default: the configured default)")
    parser.add_argument(
        "--reload",
        action="store_true",
        help="send every change of a local file (in the current folder's code) to the running task",
    )


def execute(args: argparse.Namespace) -> int:
    from dstack.cli.connection import get_client
    from dstack.cli.errors import CLIError
    from dstack.cli.ports import follow_with_ports, reserve_for_attach

    client = get_client(args.project, start_embedded=False)
    run = client.get_run(args.run_name)
    nodes = len(run.get("nodes") or []) or 1
    if args.node is not None and args.node >= nodes:
        ranks = "one node (0)" if nodes == 1 else f"{nodes} nodes (0-{nodes - 1})"
        raise CLIError(f"Run {args.run_name} has {ranks}; there is no node {args.node}")
    forwards = reserve_for_attach(client, run, args.port)
    if args.reload:
        from dstack.cli.reload import attach_reload

        attach_reload(client, run)
    # Ports are the master's (as in dstack): the forwards reach node 0 whichever output is shown.
    return follow_with_ports(client, args.run_name, forwards, tail=args.tail, node=args.node)
