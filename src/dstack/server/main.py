"""`dstack server`: run the control plane in the foreground with uvicorn."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys

import uvicorn

from dstack.api.config import ProjectEntry, load_config, save_config
from dstack.server.app import create_app
from dstack.server.config_file import load_server_config
from dstack.server.services.tunnel import expose_websocket_protocol
from dstack.server.services.users import DEFAULT_PROJECT
from dstack.server.settings import ServerSettings


class PortInUse(Exception):
    pass


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortInUse(
                f"Port {port} on {host} is in use (another dstack server?); pass --port to use another one"
            ) from e


def serve(
    settings: ServerSettings, *, embedded: bool = False, log_level: str = "warning", fd: int | None = None
) -> None:
    """`fd`: an already listening socket to serve on (its port is `settings.port`)."""
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    if sockets is None:
        check_port(settings.host, settings.port)
    # A mistake in config.yml is one sentence here, not a traceback from the app's start-up.
    settings.ensure_dirs()
    load_server_config(settings.config_file)
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def on_ready(issued_token: str | None) -> None:
        _write_server_info(settings)
        if issued_token is not None and settings.write_cli_config:
            _remember_in_cli_config(settings, issued_token, embedded=embedded)
        if not embedded:
            print(f"The dstack server is running at {settings.url}", flush=True)
            if issued_token is not None:
                print(f"The admin token is {issued_token}", flush=True)

    config = uvicorn.Config(
        expose_websocket_protocol(create_app(settings, on_ready)),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
        ws="websockets",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=sockets)  # on uvloop: uvicorn picks the loop from the config
    finally:
        (settings.server_dir / "server.json").unlink(missing_ok=True)
    if not server.started:
        sys.exit(1)


def _write_server_info(settings: ServerSettings) -> None:
    info = {"pid": os.getpid(), "url": settings.url}
    (settings.server_dir / "server.json").write_text(json.dumps(info))


def _remember_in_cli_config(settings: ServerSettings, token: str, *, embedded: bool) -> None:
    """Point the CLI at this server if it points nowhere yet, or already points here (with an old token)."""
    config = load_config()
    current = config.default(DEFAULT_PROJECT)
    if current is not None and current.url != settings.url:
        return
    config.upsert(
        ProjectEntry(name=DEFAULT_PROJECT, url=settings.url, token=token, default=True, embedded=embedded)
    )
    save_config(config)
