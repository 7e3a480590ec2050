"""dstack schema: print the JSON Schema of `*.dstack.yml` files, for editors (yaml-language-server)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the schema to FILE instead of printing it"
    )


def execute(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from dstack.cli.errors import CLIError
    from dstack.config import configuration_json_schema

    text = json.dumps(configuration_json_schema(), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise CLIError(f"Cannot write {args.output}: {e.strerror or e}") from None
    return 0
