"""argparse `type=` converters for numbers. argparse's own `int` and `float` read Arabic-Indic and
fullwidth digits ("٨٠") as 80, and fail on 5,000 digits with a ValueError of Python's; these take ASCII
digits only and say in one short sentence what they expected."""

from __future__ import annotations

import argparse
import math

from dstack.core.numbers import is_ascii_number, parse_whole
from dstack.core.text import clip


def whole_number(text: str) -> int:
    value = parse_whole(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"'{clip(text)}' is not a whole number such as 10")
    return value


def positive_number(text: str) -> int:
    value = whole_number(text)
    if value == 0:
        raise argparse.ArgumentTypeError("it must be 1 or more")
    return value


def port_number(text: str) -> int:
    value = parse_whole(text)
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"'{clip(text)}' is not a port; use 1-65535")
    return value


def price(text: str) -> float:
    value = float(text) if is_ascii_number(text) and len(text) <= 30 else math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"'{clip(text)}' is not a price in USD per hour above 0, e.g. 0.5")
    return value


def add_node_flag(parser: argparse.ArgumentParser) -> None:
    """`--node K` of the commands that show a run's output (logs, attach)."""
    parser.add_argument(
        "--node",
        type=whole_number,
        metavar="K",
        help="a multi-node run's node K (its rank; default: the master, 0)",
    )
