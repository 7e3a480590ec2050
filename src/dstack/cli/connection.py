"""Which server the CLI talks to. With none configured, the CLI starts one in the background (the
embedded default, see `embedded.py`), records it in ~/.dstack/config.yml and reuses it; if it later stops
answering, the CLI starts it again on the same port with the same token: when a command starts
(`get_client`), and when an attached command loses it on the way (`revive`).
"""

from __future__ import annotations

import os
from pathlib import Path

from dstack.api.client import Client
from dstack.api.config import load_config
from dstack.api.errors import ServerUnreachable, Unauthorized
from dstack.cli.errors import CLIError


def server_dir() -> Path:
    env = os.environ.get("DSTACK_SERVER_DIR")
    return Path(env) if env else Path.home() / ".dstack" / "server"


def get_client(project: str | None = None, *, start_embedded: bool = True) -> Client:
    url, token = os.environ.get("DSTACK_SERVER_URL"), os.environ.get("DSTACK_TOKEN")
    if url and token:
        # Inside a run with `dstack: true` (or wherever both are set): that server, that token.
        return Client(url, token, project or os.environ.get("DSTACK_PROJECT") or "main")
    entry = load_config().default(project)
    if entry is None:
        if project is not None:
            raise CLIError(
                f"Project {project} is not configured; "
                f"run dstack config --project {project} --url URL --token TOKEN"
            )
        if not start_embedded:
            raise CLIError(
                "No dstack server is configured; run dstack server, or dstack config --url URL --token TOKEN"
            )
        from dstack.cli.embedded import start_embedded_server

        entry = start_embedded_server()
    client = Client(entry.url, entry.token, entry.name)
    try:
        client.me()
    except ServerUnreachable:
        if not entry.embedded:
            raise
        revive(client)
    except Unauthorized as e:
        raise CLIError(
            f"The server at {entry.url} rejected the token in ~/.dstack/config.yml; "
            "run dstack config to set a new one"
        ) from e
    return client


def revive(client: Client) -> bool:
    """`client`'s server stopped answering: if it is the embedded one, start it again (the same port and
    token; another CLI may have done so already) and point `client` at it. False if it is not ours to
    start, or if its process still runs (a busy or frozen server is waited for, never doubled)."""
    entry = load_config().default(client.project)
    if entry is None or not entry.embedded or entry.url != client.url:
        return False
    from dstack.cli.embedded import start_embedded_server

    revived = start_embedded_server(restart=entry)
    if revived.url != client.url:  # its port was taken meanwhile: it listens elsewhere now
        client.close()
        client.url = revived.url
    return True
