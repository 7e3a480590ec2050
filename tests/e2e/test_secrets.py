"""No dstack secret reaches a task (issue 13, item 5): neither the server's admin token nor the agent's
token is in a task's environment, in /proc/self/environ, in the agent's environment (which a task of the
same user can read in /proc) or in the server's; on the local backend as processes and in containers.

The agent builds a job's environment from an allow-list (dstack/agent/jobenv.py), so a variable the
user's shell happens to have reaches a task only if the task asks for it (`env: [NAME]`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dockerd import BUSYBOX_IMAGE, dockerd  # noqa: F401 - the fixture
from tests.e2e.harness import DstackEnv
from tests.e2e.test_environments import docker_env  # noqa: F401 - the fixture (with this module's env)
from tests.e2e.test_run import task

pytestmark = pytest.mark.e2e

# Printed by the task: its env, its /proc environ, and the environ of the agent that runs it.
PROBE = [
    "env",
    "tr '\\0' '\\n' < /proc/self/environ",
    "agent=$(python3 -c \"import json, os; print(json.load(open(os.environ['AGENT_JSON']))['pid'])\"); "
    "tr '\\0' '\\n' < /proc/$agent/environ",
]
SHELL_ONLY = "DSTACK_TEST_SHELL_SECRET"


def _agent_json(env: DstackEnv) -> Path:
    return env.home / ".dstack" / "server" / "agents" / "local" / "agent.json"


def _secrets(env: DstackEnv) -> dict[str, str]:
    dstack = env.home / ".dstack"
    return {
        "admin token": json.loads((dstack / "config.yml").read_text())["projects"][0]["token"],
        "agent token": (dstack / "server" / "agents" / "local" / "token").read_text().strip(),
    }


def _environ_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")


def _check(env: DstackEnv, output: str) -> None:
    secrets = _secrets(env)
    pid = env.server_pid()
    assert pid is not None
    agent_pid = json.loads(_agent_json(env).read_text())["pid"]
    places = {
        "task output": output,
        "server environ": _environ_of(pid),
        "agent environ": _environ_of(agent_pid),
    }
    for place, text in places.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} is in the {place}"
        assert "DSTACK_SERVER_ADMIN_TOKEN" not in text and "DSTACK_AGENT_TOKEN" not in text, place
    assert f"{SHELL_ONLY}=" not in output  # not asked for: the allow-list keeps it out
    assert "ASKED_FOR=yes" in output  # asked for with env: it is there
    assert "PIP_DISABLE_PIP_VERSION_CHECK=1" in output  # host settings on the allow-list pass


@pytest.fixture
def env(dstack_env: DstackEnv) -> DstackEnv:
    dstack_env.env.update(
        {SHELL_ONLY: "from-the-shell", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "ASKED_FOR": "yes"}
    )
    return dstack_env


def test_no_secret_reaches_a_process_task(env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["true"])
    env.run("run", ".", "-y", cwd=project_dir, check=True)  # the server, its agent and their tokens
    extra = f"env:\n  - AGENT_JSON={_agent_json(env)}\n  - ASKED_FOR\n"
    task(project_dir, PROBE, extra=extra)
    result = env.run("run", ".", "-y", cwd=project_dir)
    assert result.returncode == 0, result.stderr
    assert "DSTACK_RUN_NAME=" in result.stdout  # the probe printed what it should
    _check(env, result.stdout)


def test_a_foreground_servers_token_from_its_environment_reaches_no_task(
    env: DstackEnv, project_dir: Path, tmp_path: Path
) -> None:
    from tests.e2e.test_server import _free_port, _start_server

    port = _free_port()
    server, token = _start_server(env, port, {"DSTACK_SERVER_ADMIN_TOKEN": "env-admin-token-0123"})
    try:
        assert token == "env-admin-token-0123"
        assert "env-admin-token-0123" not in _environ_of(server.pid).replace(
            "DSTACK_SERVER_ADMIN_TOKEN=env-admin-token-0123", ""
        )  # (its own start environment is the user's business; nothing it starts may have it)
        task(project_dir, ["env", "tr '\\0' '\\n' < /proc/self/environ"], extra="env:\n  - ASKED_FOR\n")
        result = env.run("run", ".", "-y", cwd=project_dir)
        assert result.returncode == 0, result.stderr
        assert "env-admin-token-0123" not in result.stdout
        agent_pid = json.loads(_agent_json(env).read_text())["pid"]
        assert "env-admin-token-0123" not in _environ_of(agent_pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_no_secret_reaches_a_container_task(docker_env: DstackEnv, project_dir: Path) -> None:  # noqa: F811
    task(project_dir, ["true"])
    docker_env.run("run", ".", "-y", cwd=project_dir, check=True)
    task(project_dir, PROBE[:2], extra=f"image: {BUSYBOX_IMAGE}\nenv:\n  - ASKED_FOR\n")
    result = docker_env.run("run", ".", "-y", cwd=project_dir, timeout=180)
    assert result.returncode == 0, result.stderr
    secrets = _secrets(docker_env)
    for what, secret in secrets.items():
        assert secret not in result.stdout, f"the {what} is in the container"
    assert "ASKED_FOR=yes" in result.stdout and f"{SHELL_ONLY}=" not in result.stdout
