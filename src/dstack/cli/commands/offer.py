"""dstack offer: the offers that fit resource requirements, without running anything."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", metavar="SPEC", help="GPU requirement, e.g. A100:80GB:2, 24GB..:1, H100")
    parser.add_argument("--cpu", metavar="SPEC", help="CPU requirement, e.g. 4, 2..8")
    parser.add_argument("--memory", metavar="SPEC", help="memory requirement, e.g. 16GB..")
    parser.add_argument("--disk", metavar="SPEC", help="disk requirement, e.g. 100GB..")
    parser.add_argument(
        "-b",
        "--backend",
        action="append",
        dest="backends",
        metavar="BACKEND",
        help="only this backend (repeatable)",
    )
    parser.add_argument("--max-price", type=float, metavar="USD", help="the most to pay per hour")
    parser.add_argument("--image", action="store_true", help="only offers that can run containers")
    parser.add_argument("--project", help="the project (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    import sys

    from dstack.cli.connection import get_client
    from dstack.cli.output import note, table
    from dstack.config import parse_configuration, parse_overrides, resolve_profile

    overrides = parse_overrides(
        gpu=args.gpu,
        cpu=args.cpu,
        memory=args.memory,
        disk=args.disk,
        backends=args.backends,
        max_price=args.max_price,
    )
    text = "type: task\nimage: offer\n" if args.image else "type: task\ncommands: [':']\n"
    configuration = parse_configuration(text, filename="offer.dstack.yml")
    profile = resolve_profile(configuration, None, overrides)
    spec = {
        "run_name": None,
        "configuration": configuration.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "commands": [":"],
        "image": "offer" if args.image else None,
        "python": None,
    }
    plan = get_client(args.project).plan(spec)
    note(f"Requirements: {plan['requirements']}", dim=True)
    if not plan["offers"]:
        sys.stderr.write((plan.get("no_offer_message") or "No offer fits") + "\n")
        return 1
    rows = [
        [
            str(i),
            o["backend"],
            o["region"],
            o["instance"],
            o["resources"],
            "yes" if o["spot"] else "no",
            f"${o['price']:g}",
            o["availability"] + (f": {o['note']}" if o.get("note") else ""),
        ]
        for i, o in enumerate(plan["offers"], 1)
    ]
    table(["#", "BACKEND", "REGION", "INSTANCE", "RESOURCES", "SPOT", "PRICE", "AVAILABILITY"], rows)
    return 0
