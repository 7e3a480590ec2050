"""dstack delete: remove finished runs and their output (the server's retention policy does it by age and
size on its own; see the server's config.yml)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_names", nargs="*", metavar="RUN", help="the runs to delete (finished ones)")
    parser.add_argument("--finished", action="store_true", help="delete every finished run of the project")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--project", help="the project (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    from dstack.cli.connection import get_client
    from dstack.cli.errors import CLIError
    from dstack.cli.output import confirm, note

    if bool(args.run_names) == bool(args.finished):
        raise CLIError("Name the runs to delete, or pass --finished to delete every finished run")
    client = get_client(args.project, start_embedded=False)
    if args.run_names:
        for name in args.run_names:
            client.get_run(name)  # one clear "not found" before anything is deleted
    what = "every finished run" if args.finished else ", ".join(args.run_names)
    if not args.yes and not confirm(f"Delete {what} and its output?"):
        note("Nothing was deleted")
        return 0
    deleted = client.delete(args.run_names, finished=args.finished)
    shown = ", ".join(deleted[:10]) + (f" and {len(deleted) - 10} more" if len(deleted) > 10 else "")
    note(f"Deleted {shown}" if deleted else "No finished run to delete")
    return 0
