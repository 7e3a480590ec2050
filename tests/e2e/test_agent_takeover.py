"""Issue 13, items 1-2, on this machine: a killed or frozen local agent never orphans a task nor ends its run
wrongly. The server starts a new agent (killing a frozen one first), which takes the task over: the run ends
with its own result and all of its output, and nothing of it is left running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.fleetkit import assert_numbered, logs, numbered, task, wait_logs, wait_status
from tests.e2e.harness import DstackEnv, pids_with_env, wait_for

pytestmark = pytest.mark.e2e


def _agent_pid(env: DstackEnv) -> int:
    return int(json.loads((env.home / ".dstack/server/agents/local/agent.json").read_text())["pid"])


def _submit(env: DstackEnv, project: Path, name: str, commands: list[str]) -> None:
    task(project, commands, name=f"{name}.dstack.yml")
    result = env.run("run", ".", "-f", f"{name}.dstack.yml", "-y", "-d", "-n", name, cwd=project)
    assert result.returncode == 0, result.stderr


def test_a_task_carries_on_under_a_new_agent_when_its_agent_is_killed(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    _submit(dstack_env, project_dir, "outlives", [numbered(40, 0.1), "exit 3"])
    wait_logs(dstack_env, "outlives", "line 3")
    killed = _agent_pid(dstack_env)
    os.kill(killed, signal.SIGKILL)
    ended = wait_status(dstack_env, "outlives", ("failed", "done"), timeout=120)
    # Its real end (not "failed to start: Agent restarted while the job was running").
    assert "exit code 3" in ended["line"] and "start" not in ended["line"], ended
    assert_numbered(logs(dstack_env, "outlives"), 40)
    assert _agent_pid(dstack_env) != killed


def test_a_frozen_agent_is_replaced_and_leaves_no_orphan(dstack_env: DstackEnv, project_dir: Path) -> None:
    _submit(dstack_env, project_dir, "printer", [numbered(150, 0.2)])
    wait_logs(dstack_env, "printer", "line 3")
    frozen = _agent_pid(dstack_env)
    os.kill(frozen, signal.SIGSTOP)
    try:
        # A run submitted during the hang is not refused: it runs once the new agent is up.
        _submit(dstack_env, project_dir, "during", ["echo submitted during the hang"])
        assert wait_status(dstack_env, "during", ("done",), timeout=180)["status"] == "done"
        assert logs(dstack_env, "during").strip() == "submitted during the hang"
        assert wait_status(dstack_env, "printer", ("done",), timeout=180)["status"] == "done"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)  # (killed by the server by now)
    assert_numbered(logs(dstack_env, "printer"), 150)
    wait_for(
        lambda: not os.path.exists(f"/proc/{frozen}/cmdline") or _zombie(frozen),
        timeout=30,
        what="the old agent",
    )
    assert _agent_pid(dstack_env) != frozen
    assert not pids_with_env("DSTACK_RUN_NAME=printer")  # nothing of the task outlives its run


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_an_agent_of_other_code_hands_its_task_to_a_new_one_after_an_upgrade(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    _submit(dstack_env, project_dir, "upgraded", [numbered(60, 0.1), "exit 4"])
    wait_logs(dstack_env, "upgraded", "line 3")
    old_agent = _agent_pid(dstack_env)
    server = dstack_env.server_pid()
    assert server is not None
    os.kill(server, signal.SIGKILL)
    # As after `pip install -U dstack`: the agent still running was started from other code.
    code_file = dstack_env.home / ".dstack/server/agents/local/agent.code"
    recorded = json.loads(code_file.read_text())
    assert recorded["pid"] == old_agent
    code_file.write_text(json.dumps({"pid": old_agent, "code_id": "an older dstack"}))
    # The next command starts the server again, which hands the job over to an agent of its own code.
    ended = wait_status(dstack_env, "upgraded", ("failed", "done"), timeout=180)
    assert "exit code 4" in ended["line"] and "start" not in ended["line"], ended
    assert_numbered(logs(dstack_env, "upgraded"), 60)
    assert _agent_pid(dstack_env) != old_agent
    assert not os.path.exists(f"/proc/{old_agent}/cmdline") or _zombie(old_agent)
    assert json.loads(code_file.read_text())["code_id"] == recorded["code_id"]
