"""The agent process: start-up rules, shutdown, restart recovery, idle exit, Python 3.9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_testkit import (
    PYTHON39,
    TOKEN,
    AgentClient,
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
        "Set the agent's API token in the DSTACK_AGENT_TOKEN environment variable "
        "(or pass it on standard input with --token-stdin)"
    ]


AGENT_FLAGS = ("--token-stdin", "--pass-env", "EXTRA_*")


def test_a_token_on_stdin_is_in_no_environment(tmp_path: Path) -> None:
    from agent_testkit import TOKEN, AgentClient, wait_for

    env = agent_env(SOMETHING_SECRET="from-the-agents-starter", PIP_INDEX_URL="http://127.0.0.1:9/simple")
    del env["DSTACK_AGENT_TOKEN"]
    work = tmp_path / "work"
    process = subprocess.Popen(
        [sys.executable, "-m", "dstack.agent", "--work-dir", str(work), *AGENT_FLAGS],
        env={**env, "EXTRA_SETTING": "passed on purpose"},
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(TOKEN.encode() + b"\n")
        process.stdin.close()
        wait_for(lambda: (work / "agent.json").exists(), 20, "the agent to start")
        client = AgentClient(json.loads((work / "agent.json").read_text())["port"], TOKEN)
        job = client.submit(["python3 -c 'import json, os; print(json.dumps(dict(os.environ)))'"])
        client.wait_final(job["id"])
        seen = json.loads(client.read_logs(job["id"]))
        # The job's host variables come from the allow-list: settings pass, anything else stays out.
        assert seen["PIP_INDEX_URL"] == "http://127.0.0.1:9/simple"
        assert seen["EXTRA_SETTING"] == "passed on purpose"
        assert "SOMETHING_SECRET" not in seen and "PYTHONPATH" not in seen
        assert TOKEN not in json.dumps(seen)
        assert TOKEN.encode() not in Path(f"/proc/{process.pid}/environ").read_bytes()
    finally:
        process.terminate()
        process.wait(30)


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


def test_a_restarted_agent_takes_over_the_jobs_left_running(start_agent: StartAgent, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    crashed = start_agent(work_dir)
    client = crashed.client()
    finished = client.submit(["echo kept"])
    client.wait_final(finished["id"])
    # It prints while no agent watches it, leaves a daemon behind and ends with its own exit code.
    wait_go = "while [ ! -e go ]; do sleep 0.05; done"
    carried = client.submit(["echo before", "setsid sleep 1000 &", wait_go, "echo after", "exit 3"])
    stopped = client.submit(["echo waiting", "sleep 1000"])
    wait_for(lambda: b"before" in client.read_logs_now(carried["id"]), 10, "the job to print")
    wait_for(lambda: len(job_processes(carried["id"])) >= 3, 10, "the job's processes to start")
    client.wait_status(stopped["id"], ["running"])
    crashed.kill()  # no chance to clean up: the jobs' processes outlive it
    client.close()
    (work_dir / "jobs" / carried["id"] / "code" / "go").touch()  # the job goes on, unwatched
    wait_for(
        lambda: (work_dir / "jobs" / carried["id"] / "output.log").read_bytes() == b"before\nafter\n",
        10,
        "the job to print while no agent runs",
    )

    restarted = start_agent(work_dir)
    client = restarted.client()
    state = client.wait_final(carried["id"])
    # Its real end, all of its output (once), and nothing left of it.
    assert (state["status"], state["exit_code"]) == ("failed", 3), state
    assert client.read_logs(carried["id"]) == b"before\nafter\n"
    wait_for(lambda: job_processes(carried["id"]) == [], 10, "the daemon to be stopped")
    # The other one runs on under the new agent, which can stop it.
    assert client.job(stopped["id"])["status"] == "running"
    assert client.stop(stopped["id"]).status == 202
    state = client.wait_final(stopped["id"])
    # SIGTERM ended bash (status unknown to an agent that is not its parent), or its sleep first (bash then
    # exits 143 itself, and says so).
    assert state["status"] == "terminated" and state["exit_code"] in (None, 143), state
    assert client.read_logs(stopped["id"]) == b"waiting\n"
    assert job_processes(stopped["id"]) == []
    assert client.job(finished["id"])["status"] == "done"
    assert client.read_logs(finished["id"]) == b"kept\n"
    job = client.submit(["echo fresh"])
    assert client.wait_final(job["id"])["status"] == "done"
    assert "Traceback" not in restarted.log()


def test_a_job_that_ended_while_no_agent_ran_keeps_its_exit_code(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    work_dir = tmp_path / "work"
    crashed = start_agent(work_dir)
    client = crashed.client()
    ended = client.submit(["echo one", "while [ ! -e go ]; do sleep 0.05; done", "exit 5"])
    killed = client.submit(["echo two", "sleep 1000"])
    client.wait_status(killed["id"], ["running"])
    wait_for(lambda: len(job_processes(killed["id"])) >= 2, 10, "the job's processes to start")
    crashed.kill()
    client.close()
    (work_dir / "jobs" / ended["id"] / "code" / "go").touch()
    wait_for(lambda: job_processes(ended["id"]) == [], 10, "the job to end")
    for pid in job_processes(killed["id"]):  # killed by someone else, with no chance to say how
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: job_processes(killed["id"]) == [], 10, "the job to die")

    client = start_agent(work_dir).client()
    state = client.wait_final(ended["id"])
    assert (state["status"], state["exit_code"]) == ("failed", 5)
    assert client.read_logs(ended["id"]) == b"one\n"
    state = client.wait_final(killed["id"])
    assert (state["status"], state["reason_code"]) == ("failed", "agent_lost")
    assert "exit status" in state["reason"]


def test_a_job_cut_short_while_being_prepared_fails_and_leaves_nothing(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    work_dir = tmp_path / "work"
    first = start_agent(work_dir)
    client = first.client()
    job = client.submit(["echo never"])
    client.wait_final(job["id"])
    client.close()
    first.terminate()
    # As an agent killed while it unpacked the code would leave the folder: created, never started.
    folder = work_dir / "jobs" / job["id"]
    state = json.loads((folder / "state.json").read_text())
    state.update(status="preparing", exit_code=None, finished_at=None)
    (folder / "state.json").write_text(json.dumps(state))
    for name in ("main.pid", "exit_code", "output.log"):
        (folder / name).unlink(missing_ok=True)
    state = start_agent(work_dir).client().wait_final(job["id"])
    assert (state["status"], state["reason_code"]) == ("failed", "agent_lost")
    assert state["reason"] == "The agent restarted while the job was being prepared"


def test_sigusr1_hands_the_jobs_over_to_the_next_agent(start_agent: StartAgent, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    old = start_agent(work_dir)
    client = old.client()
    job = client.submit(["echo one", "while [ ! -e go ]; do sleep 0.05; done", "echo two"])
    wait_for(lambda: client.read_logs_now(job["id"]) == b"one\n", 10, "the job to print")
    client.close()
    old.process.send_signal(signal.SIGUSR1)
    assert old.process.wait(30) == 0
    assert job_processes(job["id"])  # still running, with no agent
    # The next one reads its token from stdin: it is in no argv and no environment on the host.
    env = agent_env()
    del env["DSTACK_AGENT_TOKEN"]
    new = subprocess.Popen(
        [sys.executable, "-m", "dstack.agent", "--work-dir", str(work_dir), "--token-stdin"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert new.stdin is not None
        new.stdin.write(f"{TOKEN}\n".encode())
        new.stdin.close()

        def started() -> bool:
            try:
                return bool(json.loads((work_dir / "agent.json").read_text())["pid"] == new.pid)
            except (OSError, ValueError):
                return False

        wait_for(started, 20, "the new agent to start")
        assert TOKEN.encode() not in Path(f"/proc/{new.pid}/environ").read_bytes()
        client = AgentClient(json.loads((work_dir / "agent.json").read_text())["port"])
        assert client.job(job["id"])["status"] == "running"
        (work_dir / "jobs" / job["id"] / "code" / "go").touch()
        assert client.wait_final(job["id"])["status"] == "done"
        assert client.read_logs(job["id"]) == b"one\ntwo\n"
    finally:
        new.terminate()
        new.wait(30)


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


def test_the_work_folder_is_private_and_jobs_keep_the_users_umask(tmp_path: Path) -> None:
    import os
    import stat

    from agent_testkit import AgentProcess

    work = tmp_path / "work"
    (work / "jobs" / "old").mkdir(parents=True)
    (work / "jobs" / "old" / "state.json").write_text("{}")
    for path in (work, work / "jobs", work / "jobs" / "old"):
        path.chmod(0o755)
    (work / "jobs" / "old" / "state.json").chmod(0o644)
    old_umask = os.umask(0o022)  # the user's, as the agent inherits it
    try:
        agent = AgentProcess(work).wait_ready()
    finally:
        os.umask(old_umask)
    try:
        modes = {p.relative_to(work).as_posix(): stat.S_IMODE(p.lstat().st_mode) for p in work.rglob("*")}
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        assert modes["jobs/old"] == 0o700 and modes["jobs/old/state.json"] == 0o600
        assert all(mode & 0o077 == 0 for mode in modes.values()), modes
        client = agent.client()
        job = client.submit(["touch mine; stat -c %a mine"])
        client.wait_final(job["id"])
        assert client.read_logs(job["id"]).decode().strip() == "644"  # the job's own file: the user's umask
        assert stat.S_IMODE((work / "jobs" / job["id"] / "state.json").stat().st_mode) == 0o600
    finally:
        agent.terminate()
