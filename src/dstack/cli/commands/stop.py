"""dstack stop: stop a run gracefully (SIGTERM, then SIGKILL after a grace period), or abort it (-x)."""

from __future__ import annotations

import argparse

WAIT_FOR_END = 30.0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_name", metavar="RUN", help="the run's name")
    parser.add_argument("-x", "--abort", action="store_true", help="kill at once, without a grace period")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--project", help="the project (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    import time

    from dstack.cli.connection import get_client
    from dstack.cli.output import confirm, note

    client = get_client(args.project, start_embedded=False)
    run = client.get_run(args.run_name)
    if run["status"] in ("done", "failed", "terminated", "aborted"):
        note(f"Run {args.run_name} has already finished ({run['status']})")
        return 0
    verb = "Abort" if args.abort else "Stop"
    if not args.yes and not confirm(f"{verb} the run {args.run_name}?"):
        note("Nothing was stopped")
        return 0
    client.stop([args.run_name], abort=args.abort)
    deadline = time.monotonic() + WAIT_FOR_END
    while time.monotonic() < deadline:
        run = client.get_run(args.run_name)
        if run["status"] in ("done", "failed", "terminated", "aborted"):
            note("Aborted" if args.abort else "Stopped")
            return 0
        time.sleep(0.1)
    note(f"The run is still {run['status']}; it will end when its processes exit")
    return 0
