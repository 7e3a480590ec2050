"""The embedded default: a dstack server the CLI starts in the background when none is configured.

The CLI binds the listening socket itself and hands it to the server process, so the URL it records is the
one the server listens on: no window in which another program (or another user's CLI) takes the port.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dstack.api.client import Client
from dstack.api.config import ProjectEntry, load_config, save_config
from dstack.api.errors import APIError
from dstack.cli.connection import server_dir
from dstack.cli.errors import CLIError
from dstack.cli.output import note
from dstack.core.defaults import DEFAULT_SERVER_PORT

START_TIMEOUT = 60.0


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    path = server_dir() / ".start.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two CLIs starting at once must not start two servers
        yield


def start_embedded_server(restart: ProjectEntry | None = None) -> ProjectEntry:
    with _start_lock():
        # Another CLI may have started (or restarted) it while we waited for the lock.
        for entry in (load_config().default("main"), restart):
            if entry is not None and _answers(entry):
                return entry
        pid = _running_server_pid()
        if restart is not None and pid is not None:
            # Its process is there but does not answer (busy, or stopped with SIGSTOP): a second server
            # on the same database would fight it, so wait for it instead.
            raise CLIError(
                f"The dstack server (pid {pid}) runs but does not answer at {restart.url}; "
                f"it may be busy or stopped (kill -CONT {pid} resumes a stopped one)"
            )
        listener = _listen(_port_of(restart.url) if restart is not None else DEFAULT_SERVER_PORT)
        port = int(listener.getsockname()[1])
        ui_listener = _listen(port % 65535 + 1)  # the web UI's port, bound here for the same reason
        token = restart.token if restart is not None else secrets.token_urlsafe(32)
        url = f"http://127.0.0.1:{port}"
        log = server_dir() / "server.log"
        with listener, ui_listener:
            process = _spawn(listener, ui_listener, token, log)
        entry = ProjectEntry(name="main", url=url, token=token, default=True, embedded=True)
        _wait_healthy(entry, process, log)
        config = load_config()
        config.upsert(entry)
        save_config(config)
    verb = "Restarted" if restart is not None else "Started"
    note(
        f"{verb} a dstack server in the background at {url} "
        f"(web UI: dstack ui; log: {_tilde(log)}; stop: dstack server --stop)",
        dim=True,
    )
    return entry


def _spawn(
    listener: socket.socket, ui_listener: socket.socket, token: str, log: Path
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    # The token goes on the server's stdin: not on its command line (ps shows that) nor in its environment
    # (its children, and anything reading /proc/PID/environ, would see that).
    env = {name: value for name, value in os.environ.items() if name != "DSTACK_SERVER_ADMIN_TOKEN"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dstack",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(listener.getsockname()[1]),
                "--fd",
                str(listener.fileno()),
                "--ui-port",
                str(ui_listener.getsockname()[1]),
                "--ui-fd",
                str(ui_listener.fileno()),
                "--embedded",
                "--token-stdin",
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            pass_fds=(listener.fileno(), ui_listener.fileno()),
        )
    assert process.stdin is not None
    try:
        process.stdin.write(token.encode() + b"\n")
        process.stdin.close()
    except OSError:
        pass  # it exited at once: _wait_healthy says so with its log
    return process


def _wait_healthy(entry: ProjectEntry, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CLIError(f"The dstack server exited at start: {_last_line(log)} (full log: {log})")
        if _answers(entry):
            return
        time.sleep(0.05)
    process.terminate()
    raise CLIError(f"The dstack server did not start within {START_TIMEOUT:.0f} s (log: {log})")


def _answers(entry: ProjectEntry) -> bool:
    client = Client(entry.url, entry.token, entry.name, timeout=5)
    try:
        client.me()
        return True
    except APIError:
        return False
    finally:
        client.close()


def _running_server_pid() -> int | None:
    """The pid in server.json if that process is still a dstack server (a kill -9 leaves the file)."""
    try:
        pid = int(json.loads((server_dir() / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        if Path("/proc").is_dir():
            return None  # gone
        try:  # no /proc (macOS): the pid alone says it
            os.kill(pid, 0)
        except OSError:
            return None
        return pid
    except OSError:
        return None
    return pid if b"dstack" in cmdline and b"server" in cmdline else None


def _listen(preferred: int) -> socket.socket:
    """A listening socket on 127.0.0.1: the preferred port if free, else any free one."""
    for port in (preferred, 0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1024)
        except OSError:
            sock.close()
            continue
        sock.set_inheritable(True)
        return sock
    raise CLIError("Could not find a free port on 127.0.0.1 for the dstack server")


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _tilde(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text.startswith(home) else text
