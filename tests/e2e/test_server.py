"""The server on its own: in the foreground, pointed at by `dstack config`, and on PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.postgres import postgres_server
from tests.e2e.test_run import task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(
    env: DstackEnv, port: int, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [str(Path(env.env["PATH"].split(":")[0]) / "dstack"), "server", "--port", str(port)],
        env={**env.env, **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    token = None
    for line in server.stdout:
        match = re.search(r"The admin token is (\S+)", line)
        if match:
            token = match.group(1)
            break
    assert token, "the server printed no admin token"
    return server, token


def test_foreground_server_and_dstack_config(
    dstack_env: DstackEnv, tmp_path: Path, project_dir: Path
) -> None:
    server_home = DstackEnv(tmp_path / "server-home")
    port = _free_port()
    server, token = _start_server(server_home, port)
    try:
        url = f"http://127.0.0.1:{port}"
        # The server points its own HOME's CLI at itself.
        config = json.loads((server_home.home / ".dstack" / "config.yml").read_text())
        assert config["projects"][0]["url"] == url
        # Another user's CLI is pointed at it with dstack config, and uses it (no embedded server).
        result = dstack_env.run("config", "--url", url, "--token", token)
        assert result.returncode == 0, result.stderr
        task(project_dir, ["echo via the configured server"])
        result = dstack_env.run("run", ".", "-y", cwd=project_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "via the configured server"
        assert "Started a dstack server" not in result.stderr
        assert "via the configured server" in server_home.run("logs", _last_run(server_home)).stdout
        # Every API call but health needs the token.
        import urllib.error
        import urllib.request

        assert json.loads(urllib.request.urlopen(f"{url}/api/health").read())["service"] == "dstack-server"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/api/project/main/runs")
        assert denied.value.code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
        server_home.cleanup()


def _last_run(env: DstackEnv) -> str:
    ps = env.run("ps", "-a", check=True).stdout.splitlines()
    return ps[1].split()[0]


def test_postgresql_database(dstack_env: DstackEnv, tmp_path: Path, project_dir: Path) -> None:
    if os.environ.get("CI") != "true" and not Path("/usr/lib/postgresql").exists():
        pytest.skip("PostgreSQL is not installed here (dev/setup installs it; CI always runs this)")
    with postgres_server() as database_url:
        port = _free_port()
        server, _token = _start_server(dstack_env, port, {"DSTACK_DATABASE_URL": database_url})
        try:
            task(project_dir, ["echo stored in postgres"])
            result = dstack_env.run("run", ".", "-y", "-n", "pg-run", cwd=project_dir)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "stored in postgres"
            # The run is in PostgreSQL, not in a SQLite file.
            rows = subprocess.run(
                ["psql", database_url, "-Atc", "select name, status from runs"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert rows.strip() == "pg-run|done"
            assert not (dstack_env.home / ".dstack" / "server" / "data" / "sqlite.db").exists()
            wait_for(lambda: "pg-run" in dstack_env.run("ps", "-a").stdout, timeout=30, what="ps")
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_background_server_stops_and_comes_back(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["echo one"])
    assert dstack_env.run("run", ".", "-y", cwd=project_dir, check=True).stdout.strip() == "one"
    pid = dstack_env.server_pid()
    stopped = dstack_env.run("server", "--stop")
    assert stopped.returncode == 0 and "Stopped the dstack server" in stopped.stderr
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert dstack_env.run("server", "--stop").returncode == 1  # nothing left to stop: one sentence
    again = dstack_env.run("ps", "-a")
    assert again.returncode == 0 and "Restarted a dstack server" in again.stderr


def test_a_server_stopped_with_sigterm_removes_its_server_file(tmp_path: Path) -> None:
    home = DstackEnv(tmp_path / "home")
    server, _ = _start_server(home, _free_port())
    info = home.home / ".dstack" / "server" / "server.json"
    try:
        assert json.loads(info.read_text())["pid"] == server.pid
        server.terminate()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        home.cleanup()  # the local agent it started
    # A file left behind would name a pid that the next process may take (the CLI would wait on it).
    assert not info.exists()
