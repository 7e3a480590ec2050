"""Output retention (issue 13, item 22): `dstack delete`, the per-run output limit, and the retention pass
that deletes finished runs by age, never one that is active or that a client is reading."""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.test_run import task, write

pytestmark = pytest.mark.e2e


def _server_config(env: DstackEnv, retention: str) -> None:
    write(
        env.home / ".dstack" / "server" / "config.yml", "backends:\n  - type: local\nretention:\n" + retention
    )


def _names(env: DstackEnv) -> list[str]:
    return [line.split()[0] for line in env.run("ps", "-a", check=True).stdout.splitlines()[1:]]


def _client(env: DstackEnv):  # type: ignore[no-untyped-def]
    from dstack.api.client import Client

    entry = json.loads((env.home / ".dstack" / "config.yml").read_text())["projects"][0]
    return Client(entry["url"], entry["token"])


def _log_file(env: DstackEnv, name: str) -> Path:
    job_id = _client(env).get_run(name)["job"]["id"]
    return env.home / ".dstack" / "server" / "logs" / f"{job_id}.log"


def test_delete_removes_finished_runs_and_their_output(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["echo some output"])
    for name in ("first", "second"):
        dstack_env.run("run", ".", "-y", "-n", name, cwd=project_dir, check=True)
    task(project_dir, ["sleep 300"])
    dstack_env.run("run", ".", "-y", "-d", "-n", "busy", cwd=project_dir, check=True)
    first_log = _log_file(dstack_env, "first")
    assert first_log.read_text() == "some output\n"

    result = dstack_env.run("delete", "first", "-y")
    assert result.returncode == 0 and result.stderr.strip() == "Deleted first", result.stderr
    assert not first_log.exists()
    assert "first" not in _names(dstack_env)
    refused = dstack_env.run("delete", "busy", "-y")
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("Run busy is ") and "stop it first" in refused.stderr
    missing = dstack_env.run("delete", "nope", "-y")
    assert missing.returncode == 1 and missing.stderr.strip() == "Run nope not found in project main"

    result = dstack_env.run("delete", "--finished", "-y")
    assert result.returncode == 0 and result.stderr.strip() == "Deleted second", result.stderr
    assert _names(dstack_env) == ["busy"]  # an active run is never deleted
    usage = dstack_env.run("delete", "-y")
    assert usage.returncode == 1 and "--finished" in usage.stderr
    dstack_env.run("stop", "busy", "-y", "-x", check=True)


def test_a_run_over_its_output_limit_ends_with_log_quota_exceeded(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    _server_config(dstack_env, "  run_output_limit: 1MB\n")
    # 20 MB, then it would go on for minutes: it must be stopped for its output.
    task(project_dir, ["yes 0123456789 | head -c 20000000; sleep 300"])
    started = time.monotonic()
    result = dstack_env.run("run", ".", "-y", "-n", "chatty", cwd=project_dir, timeout=240)
    assert result.returncode == 1
    assert "log quota exceeded" in result.stderr, result.stderr
    assert time.monotonic() - started < 200  # it did not sleep its 300 s out
    assert len(result.stdout.encode()) == 1024**2  # exactly the limit was kept, and shown
    listing = dstack_env.run("ps", "-a", "-v", check=True).stdout
    assert "failed" in listing
    assert "log quota exceeded: the run printed more than 1MB of output" in listing
    assert _log_file(dstack_env, "chatty").stat().st_size == 1024**2


def test_a_local_runs_output_is_stored_once_on_the_disk_and_outlives_the_agents_folder(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    task(project_dir, ["seq 1 300000", "sleep 300"])  # 2 MB of lines, then it runs on
    expected = "".join(f"{i}\n" for i in range(1, 300001))
    dstack_env.run("run", ".", "-y", "-d", "-n", "once", cwd=project_dir, check=True)
    server_copy = _log_file(dstack_env, "once")
    agent_file = dstack_env.home / ".dstack/server/agents/local/jobs" / server_copy.stem / "output.log"
    wait_for(
        lambda: server_copy.exists() and server_copy.stat().st_size == len(expected),
        timeout=60,
        what="the output in the server's copy",
    )
    # One file with two names: the task's bytes were written once, not copied by the server.
    assert os.path.samefile(server_copy, agent_file)
    dstack_env.run("stop", "once", "-y", check=True, timeout=60)
    wait_for(lambda: not agent_file.parent.exists(), timeout=30, what="the agent to delete the job's folder")
    assert server_copy.read_text() == expected
    shown = dstack_env.run("logs", "once", check=True).stdout
    assert shown == expected


def test_retention_deletes_old_runs_but_not_while_a_client_reads_them(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    _server_config(dstack_env, "  max_age: 2s\n  max_size: off\n")
    task(project_dir, ["head -c 60000000 /dev/zero | tr '\\0' x"])  # 60 MB: more than socket buffers hold
    dstack_env.run("run", ".", "-y", "-n", "big", cwd=project_dir, check=True, timeout=240)
    # A client starts reading its output and stops halfway: the server is inside the response.
    client = _client(dstack_env)
    parts = urlsplit(client.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request(
        "GET", "/api/project/main/runs/big/logs", headers={"Authorization": f"Bearer {client.token}"}
    )
    response = conn.getresponse()
    assert response.read(1024) == b"x" * 1024
    try:
        task(project_dir, ["true"])
        dstack_env.run("run", ".", "-y", "-n", "trigger", cwd=project_dir, check=True)  # a run ends: a pass
        wait_for(lambda: "trigger" not in _names(dstack_env), timeout=120, what="the old trigger run to go")
        assert "big" in _names(dstack_env)  # read by a client: kept
    finally:
        conn.close()
    task(project_dir, ["true"])
    dstack_env.run("run", ".", "-y", "-n", "another", cwd=project_dir, check=True)
    wait_for(lambda: "big" not in _names(dstack_env), timeout=120, what="the unread old run to go")
