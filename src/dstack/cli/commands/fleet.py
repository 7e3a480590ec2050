"""dstack fleet [list] | dstack fleet delete NAME: the user's own hosts (applied with dstack apply)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="the project (default: the configured default)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="list the fleets and their hosts (the default)")
    delete = actions.add_parser("delete", help="delete a fleet (its hosts' agents are stopped)")
    delete.add_argument("name", metavar="NAME", help="the fleet's name")
    delete.add_argument(
        "-y", "--yes", action="store_true", help="do not ask; stop the runs on the fleet's hosts"
    )
    delete.add_argument("--project", help=argparse.SUPPRESS)


def execute(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "delete":
        return _delete(args)
    return _list(args)


def _list(args: argparse.Namespace) -> int:
    from dstack.cli.connection import get_client
    from dstack.cli.fleet_flow import print_hosts
    from dstack.cli.output import note

    client = get_client(args.project)
    fleets = client.list_fleets()
    if not fleets:
        note("No fleets yet: describe your hosts in fleet.dstack.yml, then dstack apply -f fleet.dstack.yml")
        return 0
    hosts = [host for fleet in fleets for host in fleet["hosts"]]
    print_hosts(hosts, fleet_column=True)
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dstack.api.errors import APIError
    from dstack.cli.connection import get_client
    from dstack.cli.errors import CLIError
    from dstack.cli.output import confirm, note

    client = get_client(args.project, start_embedded=False)
    fleet = client.get_fleet(args.name)
    runs = sorted({run["name"] for host in fleet["hosts"] for run in host["runs"]})
    if runs and not args.yes:
        raise CLIError(
            f"Fleet {args.name} runs {', '.join(runs)}; stop them first (dstack stop), "
            f"or pass -y to stop them and delete the fleet"
        )
    if not args.yes and not confirm(f"Delete the fleet {args.name}?"):
        note("Nothing was deleted")
        return 0
    try:
        client.delete_fleets([args.name], force=args.yes)
    except APIError as e:
        raise CLIError(str(e)) from None
    note(f"Fleet {args.name} deleted")
    return 0
