"""The API endpoints the web UI reads (general ones: the CLI and any API user may use them too), through
the public Python client against a real server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from dstack.api.client import Client
from dstack.api.errors import APIError
from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.postgres import postgres_server
from tests.e2e.test_run import task
from tests.ui.kit import Server, add_user, fill_runs, request, session_cookie, start_server

pytestmark = pytest.mark.e2e


def _cursor(run: dict[str, object]) -> str:
    return f"{run['submitted_at']}:{run['id']}"


def test_pages_walk_every_run_once_even_when_runs_share_an_instant(server: Server) -> None:
    fill_runs(server.db_path, 40)
    conn = sqlite3.connect(server.db_path)
    conn.execute("UPDATE runs SET submitted_at = 1000.5 WHERE name BETWEEN 'bulk-000010' AND 'bulk-000029'")
    conn.commit()
    conn.close()
    client = Client(server.url, server.token)
    everything = client.list_runs(all=True, limit=1000)
    assert len(everything) == 40
    order = [(r["submitted_at"], r["id"]) for r in everything]
    assert order == sorted(order, reverse=True)  # newest first, ties broken by id

    pages, before = [], None
    while True:
        page = client.list_runs(all=True, limit=7, before=before)
        if not page:
            break
        pages.append([r["name"] for r in page])
        before = _cursor(page[-1])
    assert [n for p in pages for n in p] == [r["name"] for r in everything]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 7, 5]

    # And back: the page newer than a cursor is the one before it.
    cursor = _cursor(everything[14])  # the first run of the third page
    newer = client.json("GET", "/api/project/main/runs", params={"all": "true", "limit": 7, "after": cursor})
    assert [r["name"] for r in newer] == pages[1]

    with pytest.raises(APIError) as bad:
        client.list_runs(all=True, before="yesterday")
    assert str(bad.value) == "The page cursor 'yesterday' is not valid; pass SUBMITTED_AT:RUN_ID of a run"


def test_history_feed_and_hosts_of_a_real_run(server: Server, dstack_env: DstackEnv, tmp_path: Path) -> None:
    client = Client(server.url, server.token)
    start = client.json("GET", "/api/project/main/history")["last"]
    project = tmp_path / "project"
    project.mkdir()
    task(project, ["echo working", "sleep 6", "exit 3"])
    result = dstack_env.run("run", ".", "-y", "-d", "-n", "fails-late", cwd=project)
    assert result.returncode == 0, result.stderr

    # The feed answers as soon as something happens, with the runs it concerns.
    feed = client.json("GET", "/api/project/main/history", params={"after": start, "wait": 30})
    assert feed["entries"] and {e["run"] for e in feed["entries"]} == {"fails-late"}
    assert feed["entries"][0]["status"] == "submitted" and feed["last"] > start

    # While it runs, its host lists it, with what it holds.
    def on_host() -> list[dict[str, object]] | None:
        hosts = client.list_hosts()
        return hosts if any(r["name"] == "fails-late" for h in hosts for r in h["runs"]) else None

    hosts = wait_for(on_host, timeout=60, what="the run on its host")
    local = next(h for h in hosts if h["name"] == "local")
    assert local["status"] == "ready" and local["backend"] == "local" and local["fleet"] == "local/local"
    assert local["cpus"] >= 1 and local["memory_gb"] > 0 and "CPU" in str(local["resources"])

    # Another project's user sees the host busy, not whose run it is, and none of main's history.
    add_user(server.db_path, "bob", "bob-token", "speech")
    bob = Client(server.url, "bob-token", "speech")
    theirs = next(h for h in bob.list_hosts() if h["name"] == "local")
    assert theirs["runs"] == [] and theirs["other_projects_runs"] == 1
    assert bob.json("GET", "/api/project/speech/history", params={"after": start})["entries"] == []
    with pytest.raises(APIError) as denied:
        Client(server.url, "bob-token", "main").run_history("fails-late")
    assert denied.value.status == 403

    wait_for(lambda: client.get_run("fails-late")["status"] == "failed", timeout=60, what="the run to fail")
    history = client.run_history("fails-late")
    statuses = [e["status"] for e in history]
    assert statuses[0] == "submitted" and statuses[-1] == "failed"
    assert "running" in statuses
    assert [e["at"] for e in history] == sorted(e["at"] for e in history)
    assert history[-1]["termination_reason"] == "commands_failed"
    assert history[-1]["termination_message"] == "commands failed with exit code 3"
    assert history[-1]["exit_code"] == 3
    plan = client.json("GET", "/api/project/main/runs/fails-late/plan")
    assert plan["requirements"] == "2.. CPUs, 8GB.. memory, no GPU"
    assert plan["host"]["name"] == "local"
    # The CLI's offer command reads the same offers endpoint.
    offers = dstack_env.run("offer", "--cpu", "1..")
    assert offers.returncode == 0 and "local" in offers.stdout


def test_history_pages_and_sessions_on_postgresql(dstack_env: DstackEnv, tmp_path: Path) -> None:
    with postgres_server() as database_url:
        server = start_server(dstack_env, extra_env={"DSTACK_DATABASE_URL": database_url})
        try:
            client = Client(server.url, server.token)
            project = tmp_path / "project"
            project.mkdir()
            task(project, ["echo on postgres"])
            for name in ("pg-one", "pg-two", "pg-three"):
                result = dstack_env.run("run", ".", "-y", "-n", name, cwd=project)
                assert result.returncode == 0, result.stderr
            first = client.list_runs(all=True, limit=2)
            assert [r["name"] for r in first] == ["pg-three", "pg-two"]
            rest = client.list_runs(all=True, limit=2, before=_cursor(first[-1]))
            assert [r["name"] for r in rest] == ["pg-one"]
            statuses = [e["status"] for e in client.run_history("pg-two")]
            assert statuses[0] == "submitted" and statuses[-1] == "done"
            feed = client.json("GET", "/api/project/main/history", params={"after": 0})
            assert {e["run"] for e in feed["entries"]} == {"pg-one", "pg-two", "pg-three"}
            cookie, _ = session_cookie(server)
            status, body, _ = request(
                server.ui_url, "GET", "/api/project/main/runs?all=true", headers={"Cookie": cookie}
            )
            assert status == 200 and len(json.loads(body)) == 3
        finally:
            server.stop()
