"""dstack secret set/list/delete: the project's secrets, for `${{ secrets.NAME }}` in env and registry_auth.

A value given on the command line stays in the shell's history; `dstack secret set NAME` without one
reads it from the terminal (hidden) or from standard input instead.
"""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="the project (default: the configured default)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    set_parser = actions.add_parser("set", help="set a secret (create or replace it)")
    set_parser.add_argument("name", metavar="NAME")
    set_parser.add_argument(
        "value", metavar="VALUE", nargs="?", help="the value (default: read it from the terminal or stdin)"
    )
    set_parser.add_argument("--project", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    list_parser = actions.add_parser("list", help="list the secrets' names (values are never shown)")
    list_parser.add_argument("--project", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    delete_parser = actions.add_parser("delete", help="delete a secret")
    delete_parser.add_argument("name", metavar="NAME")
    delete_parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete_parser.add_argument("--project", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def execute(args: argparse.Namespace) -> int:
    from dstack.cli.connection import get_client
    from dstack.cli.errors import CLIError
    from dstack.cli.output import confirm, note, table

    if args.action is None:
        raise CLIError(
            "Say what to do: dstack secret set NAME VALUE, dstack secret list or dstack secret delete NAME"
        )
    client = get_client(args.project)
    if args.action == "set":
        value = args.value if args.value is not None else _read_value(args.name)
        result = client.set_secret(args.name, value)
        note(
            f"Secret {args.name} {'set' if result.get('created') else 'replaced'} in project {client.project}"
        )
        return 0
    if args.action == "list":
        from dstack.cli.commands.ps import ago

        rows = [[s["name"], f"{s['length']} characters", ago(s["updated_at"])] for s in client.list_secrets()]
        table(["NAME", "VALUE", "UPDATED"], [[n, f"(hidden, {v})", u] for n, v, u in rows])
        return 0
    if not args.yes and not confirm(f"Delete secret {args.name}?"):
        note("Exiting...")
        return 0
    client.delete_secret(args.name)
    note(f"Secret {args.name} deleted from project {client.project}")
    return 0


def _read_value(name: str) -> str:
    import sys

    from dstack.cli.errors import CLIError

    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"Value of {name} (hidden): ")
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise CLIError(f"No value for secret {name}; pass it as dstack secret set {name} VALUE or on stdin")
    return value
