"""Which server the CLI talks to. With none configured, the CLI starts one in the background (the
embedded default), records it in ~/.dstack/config.yml and reuses it; if it later stops answering, the CLI
starts it again on the same port with the same token.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from dstack.api.errors import APIError, ServerUnreachable, Unauthorized
from dstack.cli.errors import CLIError
from dstack.cli.output import note

DEFAULT_PORT = 3000
START_TIMEOUT = 60.0


def server_dir() -> Path:
    env = os.environ.get("DSTACK_SERVER_DIR")
    return Path(env) if env else Path.home() / ".dstack" / "server"


def get_client(project: str | None = None, *, start_embedded: bool = True) -> Client:
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
        entry = start_embedded_server()
    client = Client(entry.url, entry.token, entry.name)
    try:
        client.me()
    except ServerUnreachable:
        if not entry.embedded:
            raise
        entry = start_embedded_server(restart=entry)
        client = Client(entry.url, entry.token, entry.name)
    except Unauthorized as e:
        raise CLIError(
            f"The server at {entry.url} rejected the token in ~/.dstack/config.yml; "
            "run dstack config to set a new one"
        ) from e
    return client


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
        entry = load_config().default("main") if restart is None else restart
        if entry is not None and _answers(entry):
            return entry
        port = _port_of(restart.url) if restart is not None else _pick_port()
        token = restart.token if restart is not None else secrets.token_urlsafe(32)
        url = f"http://127.0.0.1:{port}"
        log = server_dir() / "server.log"
        process = _spawn(port, token, log)
        entry = ProjectEntry(name="main", url=url, token=token, default=True, embedded=True)
        _wait_healthy(entry, process, log)
        config = load_config()
        config.upsert(entry)
        save_config(config)
    verb = "Restarted" if restart is not None else "Started"
    note(
        f"{verb} a dstack server in the background at {url} (log: {_tilde(log)}; stop: dstack server --stop)",
        dim=True,
    )
    return entry


def _spawn(port: int, token: str, log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DSTACK_SERVER_ADMIN_TOKEN=token)  # never on the command line, where ps shows it
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dstack",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--embedded",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )


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


def _pick_port() -> int:
    for port in (DEFAULT_PORT, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
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
