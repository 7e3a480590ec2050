"""The agent process: start-up rules, shutdown, restart recovery, idle exit, Python 3.9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_testkit import (
    PYTHON39,
    TOKEN,
    AgentProcess,
    agent_env,
    file_member,
    job_processes,
    new_job_id,
    wait_for,
)

from dstack.agent import __version__

StartAgent = Callable[..., AgentProcess]


def _run_agent(work_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dstack.agent", "--work-dir", str(work_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = agent_env()
    del env["DSTACK_AGENT_TOKEN"]
    result = _run_agent(tmp_path / "work", env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Set the agent's API token in the DSTACK_AGENT_TOKEN environment variable"
    ]


def test_one_agent_per_work_dir(start_agent: StartAgent, tmp_path: Path) -> None:
    first = start_agent()
    result = _run_agent(first.work_dir, agent_env())
    assert result.returncode == 3
    assert result.stderr.strip() == f"Another agent is already running in {first.work_dir}"
    assert first.client().request("GET", "/api/health").status == 200


def test_agent_file_describes_the_running_agent(start_agent: StartAgent) -> None:
    agent = start_agent()
    info = json.loads((agent.work_dir / "agent.json").read_text())
    assert info["pid"] == agent.process.pid
    assert (info["host"], info["version"]) == ("127.0.0.1", __version__)
    assert info["port"] > 0
    assert agent.terminate() == 0
    assert not (agent.work_dir / "agent.json").exists()


def test_sigterm_stops_running_jobs(start_agent: StartAgent) -> None:
    agent = start_agent()
    client = agent.client()
    job = client.submit(["sleep 1000 & setsid sleep 1000 &", "sleep 1000"])
    client.wait_status(job["id"], ["running"])
    assert agent.terminate() == 0
    state = json.loads((agent.work_dir / "jobs" / job["id"] / "state.json").read_text())
    assert (state["status"], state["reason"]) == ("terminated", "Agent stopped")
    assert job_processes(job["id"]) == []
    assert "Traceback" not in agent.log()


def test_restart_recovers_jobs_left_running(start_agent: StartAgent, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    crashed = start_agent(work_dir)
    client = crashed.client()
    finished = client.submit(["echo kept"])
    client.wait_final(finished["id"])
    orphan = client.submit(["echo partial", "setsid sleep 1000 & sleep 1000"])
    wait_for(lambda: len(job_processes(orphan["id"])) >= 3, 10, "the orphan's processes to start")
    crashed.kill()  # no chance to clean up: the job's processes survive it
    client.close()
    assert job_processes(orphan["id"])

    restarted = start_agent(work_dir)
    client = restarted.client()
    # Recovery happens before the agent serves: nothing of the old job is left by now.
    assert job_processes(orphan["id"]) == []
    state = client.job(orphan["id"])
    assert (state["status"], state["reason"]) == ("failed", "Agent restarted while the job was running")
    assert client.read_logs(orphan["id"]) == b"partial\n"
    assert client.job(finished["id"])["status"] == "done"
    assert client.read_logs(finished["id"]) == b"kept\n"
    # The restarted agent runs new jobs as usual.
    job = client.submit(["echo fresh"])
    assert client.wait_final(job["id"])["status"] == "done"


def test_idle_exit(start_agent: StartAgent) -> None:
    agent = start_agent(extra_args=["--idle-exit", "1"])
    client = agent.client()
    job = client.submit(["sleep 1.5"])
    assert client.job(job["id"])["status"] in ("preparing", "running")
    client.close()
    assert agent.process.wait(timeout=30) == 0
    # It waited for the job to finish before counting idle time.
    state = json.loads((agent.work_dir / "jobs" / job["id"] / "state.json").read_text())
    assert state["status"] == "done"


def test_one_job_exits_with_the_jobs_code_once_it_is_collected(start_agent: StartAgent) -> None:
    agent = start_agent(extra_args=["--one-job"])
    client = agent.client()
    job = client.submit(["echo out", "exit 7"])
    assert client.wait_final(job["id"])["exit_code"] == 7
    # Finished but not collected: it keeps serving, so the server can still read the end.
    assert client.read_logs(job["id"]) == b"out\n"
    assert agent.process.poll() is None
    assert client.request("DELETE", f"/api/jobs/{job['id']}").status in (200, 204)
    client.close()
    assert agent.process.wait(timeout=30) == 7


def test_one_job_stops_the_job_on_a_signal_and_waits_to_be_collected(start_agent: StartAgent) -> None:
    agent = start_agent(extra_args=["--one-job", "--linger", "2"])
    client = agent.client()
    job = client.submit(["echo started", "sleep 1000"])
    client.wait_status(job["id"], ["running"])
    agent.process.send_signal(signal.SIGTERM)  # what Slurm sends at a time limit or scancel
    state = client.wait_final(job["id"])
    assert (state["status"], state["reason"]) == ("terminated", "Agent stopped")
    assert job_processes(job["id"]) == []
    assert client.read_logs(job["id"]) == b"started\n"
    client.close()
    # Nobody collects it: it exits after the linger time, with the job's failure as its code.
    assert agent.process.wait(timeout=30) != 0


def test_one_job_exits_when_no_job_comes(start_agent: StartAgent) -> None:
    agent = start_agent(extra_args=["--one-job", "--idle-exit", "1"])
    assert agent.process.wait(timeout=30) == 1  # the allocation's record says nothing ran


@pytest.mark.skipif(not PYTHON39.exists(), reason="Python 3.9 is not installed here")
def test_runs_on_python_3_9(start_agent: StartAgent) -> None:
    agent = start_agent(python=str(PYTHON39))
    client = agent.client()
    assert client.get_json("/api/health")["pid"] == agent.process.pid
    code_hash = client.upload([file_member("hello.py", b"print('hello from', __import__('sys').version)")])
    job = client.submit(["python3 hello.py", "exit 4"], code_hash=code_hash)
    state = client.wait_final(job["id"])
    assert (state["status"], state["exit_code"]) == ("failed", 4)
    assert client.read_logs(job["id"]).startswith(b"hello from")
    sleeper = client.submit(["sleep 1000"], id=new_job_id())
    client.wait_status(sleeper["id"], ["running"])
    client.stop(sleeper["id"])
    assert client.wait_final(sleeper["id"])["status"] == "terminated"
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log()
    assert TOKEN not in agent.log()
