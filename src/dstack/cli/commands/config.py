"""dstack config: point the CLI at a server (URL + token), checking both before saving."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the server's URL, e.g. http://127.0.0.1:28475 (the default port)")
    parser.add_argument("--token", help="your token on that server")
    parser.add_argument("--project", default="main", help="the project (default: main)")
    parser.add_argument(
        "--no-default", dest="default", action="store_false", help="do not make this project the default"
    )
    parser.add_argument("--remove", action="store_true", help="forget the project's entry")


def execute(args: argparse.Namespace) -> int:
    from dstack.api.client import Client
    from dstack.api.config import ProjectEntry, load_config, save_config
    from dstack.api.errors import NotFound, Unauthorized
    from dstack.cli.errors import CLIError
    from dstack.cli.output import note

    config = load_config()
    if args.remove:
        config.projects = [p for p in config.projects if p.name != args.project]
        save_config(config)
        note(f"Removed project {args.project} from ~/.dstack/config.yml")
        return 0
    if not args.url or not args.token:
        raise CLIError("Give both --url and --token (see dstack config --help)")
    client = Client(args.url, args.token, args.project, timeout=10)
    try:
        client.get_project()
    except Unauthorized as e:
        raise CLIError(f"The server at {args.url} does not accept this token") from e
    except NotFound as e:
        raise CLIError(f"The server at {args.url} has no project {args.project}") from e
    config.upsert(
        ProjectEntry(name=args.project, url=args.url.rstrip("/"), token=args.token, default=args.default)
    )
    save_config(config)
    note(f"The CLI now uses project {args.project} at {args.url}")
    return 0
