"""What `run` and `offer` share: the resource flags, turning them into profile overrides, offer rows.

argparse only at import: command modules import this while the parser is built.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dstack.cli.argtypes import price

if TYPE_CHECKING:
    from dstack.config import ProfileOverrides

OFFER_HEADERS = ["#", "BACKEND", "REGION", "INSTANCE", "RESOURCES", "SPOT", "PRICE"]
# The flags that override the profile (a command may have only some of them).
OVERRIDE_FLAGS = (
    "gpu",
    "cpu",
    "memory",
    "disk",
    "backends",
    "max_price",
    "max_duration",
    "spot_policy",
    "retry",
    "retry_limit",
    "fleets",
)


def add_requirement_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
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
    parser.add_argument("--max-price", type=price, metavar="USD", help="the most to pay per hour")
    parser.add_argument(
        "--fleet",
        action="append",
        dest="fleets",
        metavar="NAME",
        help="only the hosts of this fleet (repeatable; see dstack fleet)",
    )


def overrides_from(args: argparse.Namespace) -> ProfileOverrides:
    """The profile overrides the flags set (flags a command lacks count as not given)."""
    from dstack.config import parse_overrides

    return parse_overrides(**{name: getattr(args, name, None) for name in OVERRIDE_FLAGS})


def offer_row(number: int, offer: dict[str, Any], availability: str) -> list[str]:
    return [
        str(number),
        offer["backend"],
        offer["region"],
        offer["instance"],
        offer["resources"],
        "yes" if offer["spot"] else "no",
        f"${offer['price']:g}",
        availability,
    ]
