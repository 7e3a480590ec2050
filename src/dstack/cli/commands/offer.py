"""dstack offer: the offers that fit resource requirements, without running anything."""

from __future__ import annotations

import argparse

from dstack.cli.requirements import add_requirement_args


def register(parser: argparse.ArgumentParser) -> None:
    add_requirement_args(parser)
    parser.add_argument("--image", action="store_true", help="only offers that can run containers")
    parser.add_argument("--project", help="the project (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    import sys

    from dstack.cli.connection import get_client
    from dstack.cli.output import note, table
    from dstack.cli.requirements import OFFER_HEADERS, offer_row, overrides_from

    overrides_from(args)  # a mistake in a flag is one sentence before any server is asked (or started)
    # The server reads the flags as `dstack run` would (services/offers.py), for the web UI too.
    plan = get_client(args.project).offers(
        {
            "gpu": args.gpu,
            "cpu": args.cpu,
            "memory": args.memory,
            "disk": args.disk,
            "backends": args.backends,
            "max_price": args.max_price,
            "image": args.image,
        }
    )
    note(f"Requirements: {plan['requirements']}", dim=True)
    if plan["offers"]:
        rows = [
            offer_row(i, o, o["availability"] + (f": {o['note']}" if o.get("note") else ""))
            for i, o in enumerate(plan["offers"], 1)
        ]
        table([*OFFER_HEADERS, "AVAILABILITY"], rows)
    if plan.get("no_offer_message"):  # nothing fits (partitions that never can are listed with why)
        sys.stderr.write(plan["no_offer_message"] + "\n")
        return 1
    return 0
