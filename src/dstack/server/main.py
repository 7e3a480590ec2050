"""`dstack server`: run the control plane in the foreground with uvicorn."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys

import uvicorn

from dstack.api.config import ProjectEntry, load_config, save_config
from dstack.core.text import clip
from dstack.server.app import create_app
from dstack.server.config_file import load_server_config
from dstack.server.services.tunnel import expose_websocket_protocol
from dstack.server.services.users import DEFAULT_PROJECT
from dstack.server.settings import ServerSettings
from dstack.server.ui.app import with_ui


class PortInUse(Exception):
    """The server cannot listen where it was asked to; the message says why in one sentence."""


def listen(host: str, port: int, *, flag: str = "--port") -> socket.socket:
    """A socket listening on host:port (port 0: any free one), or PortInUse saying why in one sentence:
    the port is taken (with the flag that fixes it), the address is not this machine's, or no address."""
    shown = clip(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError):
        raise PortInUse(f"{shown} is not an address or host name this machine can listen on") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"Port {port} on {shown} is in use (another dstack server?); pass {flag} to use another one"
            ) from e
        if e.errno == errno.EADDRNOTAVAIL:
            raise PortInUse(
                f"{shown} is not an address of this machine; pass --host with one of its addresses "
                "(the default, 127.0.0.1, keeps the server on this machine)"
            ) from e
        if e.errno == errno.EACCES:
            raise PortInUse(f"Port {port} needs privileges to listen on; use a port above 1023") from e
        raise PortInUse(f"Cannot listen on {shown} port {port}: {e.strerror or e}") from e
    return sock


def check_port(host: str, port: int) -> None:
    """Raise PortInUse unless the server could listen on host:port (for a check before starting)."""
    listen(host, port).close()


def serve(
    settings: ServerSettings,
    *,
    embedded: bool = False,
    log_level: str = "warning",
    fd: int | None = None,
    ui_fd: int | None = None,
    ui_port_fixed: bool = True,
) -> None:
    """`fd`, `ui_fd`: already listening sockets to serve the API and the UI on (their ports are the
    settings'). Without `ui_port_fixed`, a busy UI port is replaced by any free one."""
    sockets = [socket.socket(fileno=fd) if fd is not None else listen(settings.host, settings.port)]
    if settings.ui_port is not None:
        sockets.append(_ui_socket(settings, ui_fd, ui_port_fixed))
        settings.ui_port = int(sockets[-1].getsockname()[1])
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
            if settings.ui_url is not None:
                print(f"The web UI is at {settings.ui_url}: run dstack ui to open it signed in", flush=True)

    def on_stopped() -> None:
        # Here, not only after server.run(): on SIGTERM uvicorn raises the signal again once it has shut
        # down, and the process ends before run() returns.
        (settings.server_dir / "server.json").unlink(missing_ok=True)

    config = uvicorn.Config(
        expose_websocket_protocol(with_ui(create_app(settings, on_ready, on_stopped), settings)),
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
        on_stopped()
    if not server.started:
        sys.exit(1)


def _ui_socket(settings: ServerSettings, fd: int | None, fixed: bool) -> socket.socket:
    assert settings.ui_port is not None
    if fd is not None:
        return socket.socket(fileno=fd)
    if settings.ui_port == settings.port and settings.ui_host == settings.host:
        raise PortInUse(f"The web UI needs a port of its own, not {settings.port}; pass another --ui-port")
    try:
        return listen(settings.ui_host, settings.ui_port, flag="--ui-port (or --no-ui)")
    except PortInUse:
        if fixed:
            raise
        return listen(settings.ui_host, 0)


def _write_server_info(settings: ServerSettings) -> None:
    info = {"pid": os.getpid(), "url": settings.url, "ui_url": settings.ui_url}
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
