"""Every API route but health needs a token (issue 13, item 9), found by walking the app's own routes, so
a route added later is covered too; the schema and the docs page are routes like the others."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dstack.server.app import create_app
from dstack.server.settings import ServerSettings
from tests.e2e.harness import DstackEnv
from tests.e2e.test_run import task

pytestmark = pytest.mark.e2e

PUBLIC = {("GET", "/api/health")}
_SAMPLES = {"project": "main", "name": "some-run", "code_hash": "0" * 64, "port": "80", "job_id": "x"}


def _request(url: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=b"{}" if method in ("POST", "PUT") else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _walk(routes: list[Any], prefix: str = "") -> list[tuple[str, set[str]]]:
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:  # an included router (FastAPI keeps its routes apart)
            found += _walk(included.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "path"):
            found.append((prefix + route.path, set(getattr(route, "methods", None) or {"GET"})))
    return found


def _routes(tmp: Path) -> list[tuple[str, str]]:
    app = create_app(ServerSettings(server_dir=tmp))  # routes only: its lifespan never runs here
    found = []
    for path, methods in _walk(app.router.routes):
        if not path.startswith("/api/"):
            continue
        concrete = re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: _SAMPLES.get(m.group(1), "x"), path)
        # A WebSocket route has no methods: its handshake is a GET.
        found.extend((method, concrete) for method in sorted(methods) if method != "HEAD")
    return found


def test_every_route_but_health_needs_a_token(
    dstack_env: DstackEnv, project_dir: Path, tmp_path: Path
) -> None:
    task(project_dir, ["true"])
    dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)  # the embedded server
    entry = json.loads((dstack_env.home / ".dstack" / "config.yml").read_text())["projects"][0]
    routes = _routes(tmp_path / "routes")
    assert ("GET", "/api/openapi.json") in routes and ("GET", "/api/docs") in routes
    assert len(routes) > 15
    websocket_headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    for method, path in routes:
        headers = websocket_headers if path.endswith("/connect") else {}
        for token in (None, "not-a-token"):
            sent = dict(headers, Authorization=f"Bearer {token}") if token else headers
            status, body = _request(entry["url"], method, path, sent)
            if (method, path) in PUBLIC:
                assert status == 200, (method, path)
            else:
                assert status == 401, (method, path, token, status, body[:200])


def test_the_schema_and_the_docs_answer_with_the_token(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["true"])
    dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)
    entry = json.loads((dstack_env.home / ".dstack" / "config.yml").read_text())["projects"][0]
    auth = {"Authorization": f"Bearer {entry['token']}"}
    status, body = _request(entry["url"], "GET", "/api/openapi.json", auth)
    assert status == 200 and "/api/project/{project}/runs/submit" in json.loads(body)["paths"]
    status, body = _request(entry["url"], "GET", "/api/docs", auth)
    assert status == 200 and b"/api/project/{project}/runs/submit" in body and b"<script" not in body
