"""dstack ui: open the server's web UI in the browser, already signed in."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the one-time sign-in link instead of opening a browser",
    )
    parser.add_argument("--project", help="the project to open (default: the configured default)")


def execute(args: argparse.Namespace) -> int:
    import webbrowser

    from dstack.api.errors import NotFound
    from dstack.cli.connection import get_client
    from dstack.cli.errors import CLIError
    from dstack.cli.output import note

    client = get_client(args.project)
    try:
        link = client.ui_sign_in_link(client.project)
    except NotFound as e:
        if "project" in str(e).lower():
            raise
        raise CLIError(f"The dstack server at {client.url} has no web UI (it is older than dstack ui)") from e
    url = str(link["url"])
    # The link holds a one-time code (in its #fragment, which no server sees), not the token: a browser
    # history or a process list that shows it shows nothing usable once it has been opened.
    seconds = int(link.get("expires_in", 120))
    if not args.print_only and webbrowser.open(url):
        note(f"Opened the dstack web UI at {url.split('#', 1)[0]} in your browser")
        return 0
    if not args.print_only:
        note("No browser could be started here; open this link in yours")
    note(f"This link signs you in once, within {seconds} s:", dim=True)
    print(url, flush=True)
    return 0
