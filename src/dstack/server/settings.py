"""Server settings: where its state lives and how it is reached. Read once at start-up."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from dstack.core.defaults import DEFAULT_SERVER_PORT
from dstack.core.private import make_tree_private

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_CODE_LIMIT_BYTES = 500 * 1024**2


def _seconds_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return max(1.0, float(value)) if value else default
    except ValueError:
        return default


def dstack_home() -> Path:
    return Path.home() / ".dstack"


def default_server_dir() -> Path:
    env = os.environ.get("DSTACK_SERVER_DIR")
    return Path(env) if env else dstack_home() / "server"


@dataclass
class ServerSettings:
    server_dir: Path = field(default_factory=default_server_dir)
    host: str = "127.0.0.1"
    port: int = DEFAULT_SERVER_PORT
    admin_token: str | None = None
    database_url: str | None = None  # None -> SQLite under server_dir
    code_limit_bytes: int = DEFAULT_CODE_LIMIT_BYTES
    # How long a claimed row stays claimed without renewal; a crashed worker's rows free up after this.
    lease_seconds: float = 15.0
    # Background loops are woken by events; this is only the safety-net poll (and how other replicas notice).
    poll_seconds: float = 2.0
    write_cli_config: bool = True
    # How long a host may stay silent while a job runs there before the job ends `host lost` (a backend
    # may say otherwise per host). The job's leftovers are stopped whenever the host answers again.
    host_lost_seconds: float = field(
        default_factory=lambda: _seconds_env("DSTACK_SERVER_HOST_LOST_SECONDS", 60.0)
    )
    # The web UI's own port (None: no UI) and address; it listens on loopback unless configured.
    ui_port: int | None = None
    ui_host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.server_dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.server_dir / "logs"

    @property
    def code_dir(self) -> Path:
        return self.server_dir / "code"

    @property
    def agents_dir(self) -> Path:
        return self.server_dir / "agents"

    @property
    def config_file(self) -> Path:
        return self.server_dir / "config.yml"

    @property
    def url(self) -> str:
        return _http_url(self.host, self.port)

    @property
    def ui_url(self) -> str | None:
        """Where a browser on this machine opens the UI (a wildcard address is reached on loopback)."""
        if self.ui_port is None:
            return None
        wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
        return _http_url(wildcard.get(self.ui_host, self.ui_host), self.ui_port)

    @property
    def public_url(self) -> str:
        """The URL tasks reach the server at (`dstack: true`): DSTACK_SERVER_URL, else the one it serves."""
        return os.environ.get("DSTACK_SERVER_URL") or self.url

    def run_token_key(self) -> bytes:
        """The server's key for run tokens (made once, owner-only): a job's token is the same on a retry."""
        path = self.server_dir / "run-token.key"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            key = secrets.token_bytes(32)
            f.write(key)
        return key

    def resolved_database_url(self) -> str:
        url = self.database_url or os.environ.get("DSTACK_DATABASE_URL")
        if url:
            # Users paste the URL their other tools use; route it to the async driver we ship.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+asyncpg://" + url.split("://", 1)[1]
            return url
        return f"sqlite+aiosqlite:///{self.data_dir / 'sqlite.db'}"

    def ensure_dirs(self) -> None:
        for d in (self.server_dir, self.data_dir, self.logs_dir, self.code_dir, self.agents_dir):
            d.mkdir(parents=True, exist_ok=True)
        make_tree_private(self.server_dir)  # also one that DSTACK_SERVER_DIR puts outside ~/.dstack


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
