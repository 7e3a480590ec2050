"""A fleet host's troubles while a task runs there: its sshd killed (back soon, or never), the server
killed, the agent killed or frozen. A run ends only with its real result, or `host lost` once its host
has been silent past the grace, and then nothing of it may go on running on the host."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.fleetkit import (
    FLEET,
    apply,
    assert_numbered,
    logs,
    numbered,
    run_status,
    task,
    wait_logs,
    wait_status,
    write_fleet,
)
from tests.e2e.harness import DstackEnv, wait_for
from tests.infra.sshhosts import ClientKey, SSHHost

pytestmark = pytest.mark.e2e
GRACE = 30  # seconds a host may stay silent before its runs end `host lost` (the server's setting here)


@pytest.fixture
def host(dstack_env: DstackEnv, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey) -> SSHHost:
    dstack_env.env["DSTACK_SERVER_HOST_LOST_SECONDS"] = str(GRACE)
    one = make_ssh_host()
    assert apply(dstack_env, write_fleet(dstack_env.home, [one], client_key)).returncode == 0
    return one


def _submit(env: DstackEnv, project: Path, name: str, commands: list[str]) -> None:
    task(project, commands, name=f"{name}.dstack.yml")
    result = env.run(
        "run",
        ".",
        "-f",
        f"{name}.dstack.yml",
        "-y",
        "-d",
        "--fleet",
        FLEET,
        "-n",
        name,
        cwd=project,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_a_host_whose_sshd_dies_carries_on_when_it_comes_back_and_is_lost_when_it_does_not(
    dstack_env: DstackEnv, project_dir: Path, host: SSHHost
) -> None:
    _submit(dstack_env, project_dir, "back", [numbered(60, 0.2)])
    wait_logs(dstack_env, "back", "line 5")
    host.stop_sshd()
    seen = wait_for(
        lambda: "does not answer" in (row := run_status(dstack_env, "back"))["line"] and row,
        timeout=60,
        what="ps -v to say the host does not answer",
    )
    assert seen["status"] == "running" and host.address in seen["line"]
    host.start_sshd()
    assert wait_status(dstack_env, "back", ("done",), timeout=120)["status"] == "done"
    assert_numbered(logs(dstack_env, "back"), 60)  # every line once, in order, across the outage

    _submit(dstack_env, project_dir, "gone", [numbered(100_000, 0.2)])
    wait_logs(dstack_env, "gone", "line 3")
    host.stop_sshd()
    ended = wait_status(dstack_env, "gone", ("failed",), timeout=GRACE + 90)
    assert "host lost" in ended["line"] and host.address in ended["line"], ended
    assert host.processes_with_env("DSTACK_RUN_NAME=gone")  # the host never said the task ended
    host.start_sshd()
    # Back: what the lost run left there is stopped, and the host takes tasks again.
    wait_for(
        lambda: not host.processes_with_env("DSTACK_RUN_NAME=gone"),
        timeout=120,
        what="the lost run's processes to be stopped",
    )
    _submit(dstack_env, project_dir, "after", ["echo fine"])
    assert wait_status(dstack_env, "after", ("done",))["status"] == "done"


def test_a_killed_server_finds_the_remote_task_with_its_output_complete(
    dstack_env: DstackEnv, project_dir: Path, host: SSHHost
) -> None:
    _submit(dstack_env, project_dir, "survivor", [numbered(40, 0.1)])
    wait_logs(dstack_env, "survivor", "line 3")
    pid = dstack_env.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # The next command starts the embedded server again; it reconnects and picks the run up.
    assert wait_status(dstack_env, "survivor", ("done",), timeout=180)["status"] == "done"
    assert_numbered(logs(dstack_env, "survivor"), 40)
    assert dstack_env.server_pid() != pid


def test_a_killed_or_frozen_agent_on_a_host_hands_the_task_to_a_new_one(
    dstack_env: DstackEnv, project_dir: Path, host: SSHHost
) -> None:
    _submit(dstack_env, project_dir, "killed", [numbered(40, 0.1), "exit 7"])
    wait_logs(dstack_env, "killed", "line 3")
    (agent,) = host.agent_pids()
    os.kill(agent, signal.SIGKILL)
    ended = wait_status(dstack_env, "killed", ("failed",), timeout=120)
    assert "exit code 7" in ended["line"] or "failed (7)" in ended["line"], ended  # its own end
    assert_numbered(logs(dstack_env, "killed"), 40)
    assert host.agent_pids() and host.agent_pids() != [agent]

    _submit(dstack_env, project_dir, "frozen", [numbered(150, 0.2)])
    wait_logs(dstack_env, "frozen", "line 3")
    (agent,) = host.agent_pids()
    os.kill(agent, signal.SIGSTOP)
    try:
        assert wait_status(dstack_env, "frozen", ("done",), timeout=180)["status"] == "done"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent, signal.SIGCONT)  # (killed by then)
    assert_numbered(logs(dstack_env, "frozen"), 150)
    assert agent not in host.agent_pids()


def test_a_fleet_with_running_tasks_is_deleted_only_when_confirmed(
    dstack_env: DstackEnv, project_dir: Path, host: SSHHost
) -> None:
    _submit(dstack_env, project_dir, "blocker", ["sleep 600"])
    wait_status(dstack_env, "blocker", ("running",))
    refused = dstack_env.run("fleet", "delete", FLEET)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"Fleet {FLEET} runs blocker; stop them first (dstack stop), "
        "or pass -y to stop them and delete the fleet"
    )
    assert FLEET in dstack_env.run("fleet", check=True).stdout
    deleted = dstack_env.run("fleet", "delete", FLEET, "-y", timeout=300)
    assert deleted.returncode == 0, deleted.stderr
    assert wait_status(dstack_env, "blocker", ("terminated",))["status"] == "terminated"
    assert "No fleets yet" in dstack_env.run("fleet", check=True).stderr
    wait_for(lambda: not host.agent_pids(), timeout=60, what="the host's agent to stop")
    assert not host.processes_with_env("DSTACK_RUN_NAME=blocker")
