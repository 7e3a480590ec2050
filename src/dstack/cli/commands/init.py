"""dstack init: check the server and record this repository (harmless to repeat)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="the project (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dstack.cli.connection import get_client
    from dstack.cli.output import note
    from dstack.code import find_code_root

    client = get_client(args.project)
    root = find_code_root(Path.cwd())
    note(f"OK: {root} runs on project {client.project} at {client.url}")
    return 0
