"""dstack logs: a run's output, again; -f follows a running one."""

from __future__ import annotations

import argparse

from dstack.cli.argtypes import add_node_flag, whole_number


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_name", metavar="RUN", help="the run's name")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing output until the run ends")
    parser.add_argument("--tail", type=whole_number, metavar="N", help="start with the last N lines")
    add_node_flag(parser)
    parser.add_argument("--project", help="the project (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    import sys

    from dstack.cli.connection import get_client
    from dstack.cli.errors import CLIError
    from dstack.cli.follow import Follower

    if args.tail is not None and args.tail < 0:
        raise CLIError("--tail takes a number of lines, 0 or more")
    client = get_client(args.project, start_embedded=False)
    if args.follow:
        follower = Follower(client, args.run_name, tail=args.tail, ask_on_interrupt=False, node=args.node)
        follower.follow()
        return 0
    client.get_run(args.run_name)  # one clear "not found" before any output
    out = sys.stdout.buffer
    for chunk in client.logs(args.run_name, tail=args.tail, node=args.node):
        out.write(chunk)
    out.flush()
    return 0
