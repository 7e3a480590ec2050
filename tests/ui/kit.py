"""The web UI's test kit: a real `dstack server` (API + UI ports) in a throw-away HOME, sign-in links,
requests on the UI port as a browser makes them, and a database filled with many runs quickly."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.harness import DSTACK, DstackEnv, wait_for

TOKEN = "ui-test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    env: DstackEnv
    process: subprocess.Popen[bytes]
    url: str
    ui_url: str
    token: str

    @property
    def db_path(self) -> Path:
        return self.env.home / ".dstack" / "server" / "data" / "sqlite.db"

    def sign_in_link(self, project: str | None = "main", token: str | None = None) -> str:
        status, body, _ = request(
            self.url,
            "POST",
            "/api/ui/sign-in",
            body={"project": project},
            headers={"Authorization": f"Bearer {token or self.token}"},
        )
        assert status == 200, body
        return str(json.loads(body)["url"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.env.cleanup()


def start_server(
    env: DstackEnv, *extra: str, ports: tuple[int, int] | None = None, extra_env: dict[str, str] | None = None
) -> Server:
    """`dstack server` in the foreground (it points the HOME's CLI at itself, so `dstack run` uses it)."""
    port, ui_port = ports or (free_port(), free_port())
    log = (env.home / "server.out").open("ab")
    process = subprocess.Popen(
        [DSTACK, "server", "--port", str(port), "--ui-port", str(ui_port), *extra],
        env={**env.env, "DSTACK_SERVER_ADMIN_TOKEN": TOKEN, **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    info = env.home / ".dstack" / "server" / "server.json"

    def ready() -> dict[str, Any] | None:
        if process.poll() is not None:
            raise AssertionError(f"dstack server exited: {(env.home / 'server.out').read_text()[-2000:]}")
        try:
            data: dict[str, Any] = json.loads(info.read_text())
        except (OSError, ValueError):
            return None
        # (A server stopped by a signal leaves its server.json behind: only this process's counts.)
        return data if data.get("pid") == process.pid and data.get("ui_url") else None

    data = wait_for(ready, timeout=90, what="the dstack server to start")
    return Server(env=env, process=process, url=data["url"], ui_url=data["ui_url"], token=TOKEN)


def request(
    base: str,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, http.client.HTTPMessage]:
    """One plain HTTP request (no cookie jar, no redirects): what a test sends is exactly what goes out."""
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=60)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        sent = dict(headers or {})
        if payload is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


def session_cookie(server: Server, link: str | None = None) -> tuple[str, str]:
    """Sign in as a browser does with a link: ("name=value" cookie, CSRF token)."""
    code = (link or server.sign_in_link()).split("#", 1)[1]
    status, body, headers = request(
        server.ui_url, "POST", "/ui/session", body={"code": code}, headers={"Origin": server.ui_url}
    )
    assert status == 200, body
    cookie = headers["set-cookie"].split(";", 1)[0]
    return cookie, str(json.loads(body)["csrf_token"])


def fill_runs(db: Path, count: int, *, project: str = "main", prefix: str = "bulk") -> list[str]:
    """`count` finished runs, oldest first, straight into SQLite in one transaction (the API would take an
    hour). Names are PREFIX-000000... in submission order; returns them newest first."""
    conn = sqlite3.connect(db, timeout=60)
    try:
        project_id, user_id = conn.execute(
            "SELECT p.id, m.user_id FROM projects p JOIN members m ON m.project_id = p.id WHERE p.name = ?",
            (project,),
        ).fetchone()
        start = time.time() - count - 3600
        names = [f"{prefix}-{i:06d}" for i in range(count)]
        conn.executemany(
            "INSERT INTO runs (id, project_id, user_id, name, submitted_at, status, finished_at,"
            " termination_reason, termination_message, exit_code, spec, configuration_path, backend,"
            " resources, price) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    str(uuid.uuid4()),
                    project_id,
                    user_id,
                    name,
                    start + i,
                    "failed" if i % 7 == 0 else "done",
                    start + i + 30,
                    "commands_failed" if i % 7 == 0 else None,
                    "commands failed with exit code 1" if i % 7 == 0 else None,
                    1 if i % 7 == 0 else 0,
                    "{}",
                    "bulk.dstack.yml",
                    "local",
                    "2xCPU, 24GB (shared)",
                    0.0,
                )
                for i, name in enumerate(names)
            ),
        )
        conn.commit()
    finally:
        conn.close()
    return names[::-1]


def add_user(db: Path, name: str, token: str, project: str) -> None:
    """A second (non-admin) user with a project of their own, as an admin would set them up."""
    from dstack.server.services.users import hash_token

    conn = sqlite3.connect(db, timeout=60)
    try:
        user_id, project_id, now = str(uuid.uuid4()), str(uuid.uuid4()), time.time()
        conn.execute(
            "INSERT INTO users (id, name, token_hash, is_admin, created_at) VALUES (?, ?, ?, 0, ?)",
            (user_id, name, hash_token(token), now),
        )
        conn.execute(
            "INSERT INTO projects (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)",
            (project_id, project, user_id, now),
        )
        conn.execute(
            "INSERT INTO members (project_id, user_id, role) VALUES (?, ?, 'admin')", (project_id, user_id)
        )
        conn.commit()
    finally:
        conn.close()
