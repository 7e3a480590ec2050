"""dstack server: the control plane in the foreground."""

from __future__ import annotations

import argparse
import os

from dstack.cli.argtypes import port_number
from dstack.core.defaults import DEFAULT_SERVER_PORT


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=os.environ.get("DSTACK_SERVER_HOST", "127.0.0.1"),
        help="address to listen on (default 127.0.0.1; anything else exposes the API to the network)",
    )
    parser.add_argument(
        "-p",
        "--port",
        type=port_number,
        default=os.environ.get("DSTACK_SERVER_PORT", str(DEFAULT_SERVER_PORT)),
        help=f"port to listen on (default {DEFAULT_SERVER_PORT})",
    )
    parser.add_argument(
        "--ui-port",
        type=port_number,
        default=os.environ.get("DSTACK_SERVER_UI_PORT") or None,
        help="port of the web UI (default: the next one after --port, or any free one if that is busy)",
    )
    parser.add_argument(
        "--ui-host",
        default=os.environ.get("DSTACK_SERVER_UI_HOST", "127.0.0.1"),
        help="address the web UI listens on (default 127.0.0.1)",
    )
    parser.add_argument("--no-ui", action="store_true", help="run without the web UI")
    parser.add_argument(
        "--token",
        help="the admin token (default: the saved one, or a new one on first start); "
        "DSTACK_SERVER_ADMIN_TOKEN works too and stays out of `ps`",
    )
    parser.add_argument(
        "-l",
        "--log-level",
        default=os.environ.get("DSTACK_SERVER_LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="server log level",
    )
    parser.add_argument(
        "--stop",
        action="store_true",
        help="stop the server running in the background (running tasks keep running)",
    )
    parser.add_argument(
        "--token-stdin", action="store_true", help="read the admin token from the first line of stdin"
    )
    parser.add_argument("--embedded", action="store_true", help=argparse.SUPPRESS)
    # A listening socket inherited from the CLI that started this server (see cli/embedded.py).
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ui-fd", type=int, default=None, help=argparse.SUPPRESS)


def execute(args: argparse.Namespace) -> int:
    from dstack.cli.errors import CLIError
    from dstack.cli.output import note
    from dstack.server.config_file import ServerConfigError
    from dstack.server.main import PortInUse, check_port, serve
    from dstack.server.settings import LOOPBACK_HOSTS, ServerSettings

    if args.stop:
        return _stop_background_server()
    for flag, port in (("--port", args.port), ("--ui-port", args.ui_port)):
        if port is not None and not 1 <= port <= 65535:
            raise CLIError(f"Port {port} is not valid for {flag}; use 1-65535")
    if args.fd is None:
        try:  # a foreign or busy address is one sentence before anything starts
            check_port(args.host, args.port)
        except PortInUse as e:
            raise CLIError(str(e)) from e
    for what, host in (("dstack API", args.host), ("web UI", None if args.no_ui else args.ui_host)):
        if host is not None and host not in LOOPBACK_HOSTS:
            note(
                f"Warning: listening on {host} exposes the {what} beyond this machine; it needs the token, "
                "but use TLS in front of it on untrusted networks"
            )
    ui_port = None if args.no_ui else args.ui_port or (args.port % 65535) + 1
    # Popped: nothing the server starts may inherit its admin token.
    from_env = os.environ.pop("DSTACK_SERVER_ADMIN_TOKEN", None)
    token = args.token or from_env
    if args.token_stdin:
        import sys

        token = sys.stdin.readline().strip() or None
    settings = ServerSettings(
        host=args.host, port=args.port, admin_token=token, ui_port=ui_port, ui_host=args.ui_host
    )
    try:
        serve(
            settings,
            embedded=args.embedded,
            log_level=args.log_level,
            fd=args.fd,
            ui_fd=args.ui_fd,
            ui_port_fixed=args.ui_port is not None,
        )
    except (PortInUse, ServerConfigError) as e:
        raise CLIError(str(e)) from e
    except KeyboardInterrupt:
        pass
    return 0


def _stop_background_server() -> int:
    import json
    import signal
    import time

    from dstack.cli.connection import server_dir
    from dstack.cli.errors import CLIError
    from dstack.cli.output import note

    info_file = server_dir() / "server.json"
    try:
        info = json.loads(info_file.read_text())
        pid = int(info["pid"])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        raise CLIError("No dstack server is running in the background") from None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            note(
                f"Stopped the dstack server at {info.get('url')}; "
                "tasks keep running, and the next command starts it again"
            )
            return 0
        time.sleep(0.05)
    raise CLIError(f"The dstack server (pid {pid}) did not stop within 15 s")
