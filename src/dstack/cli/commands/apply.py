"""dstack apply -f FILE: a fleet is applied (its hosts connected, the agent installed); a task is run."""

from __future__ import annotations

import argparse

from dstack.cli.commands import run as run_command


def register(parser: argparse.ArgumentParser) -> None:
    run_command.register(parser)


def execute(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dstack.config.filetype import declared_type

    if args.file:
        try:
            text = Path(args.file).read_text(errors="replace")
        except OSError:
            text = ""  # the run's own checks say what is wrong with the path
        if declared_type(text) == "fleet":
            from dstack.cli.fleet_flow import apply_fleet

            return apply_fleet(args)
    return run_command.execute(args)
