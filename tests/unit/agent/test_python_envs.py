"""Python environments and the build cache, through a real agent process and its HTTP API."""

from __future__ import annotations

import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_testkit import AgentClient, AgentProcess, agent_env, file_member, wait_for
from tests.e2e.envkit import make_wheel

StartAgent = Callable[..., AgentProcess]
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture
def agent(start_agent: StartAgent, tmp_path: Path) -> AgentProcess:
    return start_agent(tmp_path / "work", env=agent_env(**OFFLINE))


def _code(files: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [file_member(name, data) for name, data in files.items()]


def _wheel_bytes(tmp_path: Path, name: str) -> bytes:
    return make_wheel(tmp_path / "wheels", name).read_bytes()


def _run(
    client: AgentClient, commands: list[str], timeout: float = 120, **fields: object
) -> tuple[dict[str, object], str]:
    job = client.submit(commands, **fields)
    output = client.read_logs(job["id"], timeout=timeout).decode()
    return client.job(job["id"]), output


def test_python_job_gets_a_venv_of_its_version_shared_by_later_jobs(agent: AgentProcess) -> None:
    client = agent.client()
    probe = "python -c 'import sys; print(sys.version_info[:2], sys.prefix)'"
    state, first = _run(client, [probe, "echo $VIRTUAL_ENV"], python="3.10")
    assert state["status"] == "done", state
    version, prefix = first.splitlines()[0].split(") ")
    assert version == "(3, 10"
    assert Path(prefix) == agent.work_dir / "envs" / "python" / "3.10"
    assert first.splitlines()[1] == prefix
    # The job's own PATH comes first in the job's env, but python must still be the venv's.
    state, second = _run(client, [probe], python="3.10", env={"PATH": "/usr/bin:/bin"})
    assert state["status"] == "done" and second.split(") ")[1].strip() == prefix


def test_a_version_the_host_lacks_fails_with_one_sentence(agent: AgentProcess) -> None:
    state, output = _run(agent.client(), ["python -V"], python="3.99")
    assert state["status"] == "failed"
    assert state["reason"] == "Python 3.99 is not installed on this host and downloads are turned off"
    assert state["reason_code"] == "environment_failed"
    assert output == ""


def test_build_policies(agent: AgentProcess, tmp_path: Path) -> None:
    client = agent.client()
    code_hash = client.upload(
        _code(
            {
                "requirements.txt": b"wheels/dstack_cached-1.0-py3-none-any.whl\n",
                "wheels/dstack_cached-1.0-py3-none-any.whl": _wheel_bytes(tmp_path, "dstack_cached"),
            }
        )
    )
    common = {"python": "3.12", "code_hash": code_hash, "build": ["pip install -q -r requirements.txt"]}
    use = ["python -c 'import dstack_cached, sys; print(sys.prefix)'"]

    state, output = _run(client, use, build_policy="use-build", **common)
    assert (state["status"], state["reason_code"], output) == ("failed", "build_not_found", "")

    state, output = _run(client, use, build_policy="build", **common)
    assert state["status"] == "done", (state, output)
    built_prefix = output.splitlines()[-1]
    builds = agent.work_dir / "envs" / "builds"
    assert Path(built_prefix).is_relative_to(builds)

    state, output = _run(client, use, build_policy="use-build", **common)
    assert state["status"] == "done" and output.splitlines()[0].startswith("Using cached build ")
    assert output.splitlines()[-1] == built_prefix

    # A forced rebuild makes a new environment; the old one goes once no job uses it.
    state, output = _run(client, use, build_policy="force-build", **common)
    assert state["status"] == "done", (state, output)
    assert output.splitlines()[-1] != built_prefix
    assert not Path(built_prefix).exists()
    key_dirs = list(builds.iterdir())
    assert len(key_dirs) == 1
    assert len([p for p in key_dirs[0].iterdir() if p.name.startswith("b-")]) == 1


def test_a_failing_build_leaves_nothing_cached(agent: AgentProcess) -> None:
    client = agent.client()
    common = {"python": "3.12", "build": ["echo partial", "exit 5"]}
    state, output = _run(client, ["echo never"], build_policy="build", **common)
    assert state["status"] == "failed" and state["reason_code"] == "build_failed"
    assert state["reason"] == "The build commands failed with exit code 5"
    assert output.splitlines()[1:] == ["partial"]
    state, _ = _run(client, ["echo never"], build_policy="use-build", **common)
    assert state["reason_code"] == "build_not_found"
    builds = agent.work_dir / "envs" / "builds"
    assert [p for p in builds.rglob("b-*")] == []


def test_stopping_a_job_during_its_build(agent: AgentProcess) -> None:
    client = agent.client()
    build = ["echo building", "sleep 60"]
    job = client.submit(["echo never"], python="3.12", build=build, build_policy="build")
    logs = f"/api/jobs/{job['id']}/logs?offset=0"
    wait_for(lambda: b"building" in client.request("GET", logs).body, 60, "the build to start")
    assert client.stop(job["id"], grace_seconds=5).status == 202
    state = client.wait_final(job["id"], 30)
    assert (state["status"], state["reason"]) == ("terminated", "Stopped by request")
    assert [p for p in (agent.work_dir / "envs" / "builds").rglob("b-*")] == []


def test_concurrent_builds_of_one_key_build_once(agent: AgentProcess) -> None:
    client_a, client_b = agent.client(), agent.client()
    spec = {"python": "3.12", "build": ["echo built-once", "sleep 1"], "build_policy": "build"}
    outputs: dict[str, str] = {}

    def run(name: str, client: AgentClient) -> None:
        outputs[name] = _run(client, ["echo ran"], **spec)[1]

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in (("a", client_a), ("b", client_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(o.count("built-once") for o in outputs.values()) == [0, 1], outputs
    assert all(o.splitlines()[-1] == "ran" for o in outputs.values()), outputs


def test_cache_survives_an_agent_restart(start_agent: StartAgent, tmp_path: Path) -> None:
    work = tmp_path / "work"
    spec = {"python": "3.12", "build": ["echo built"]}
    first = start_agent(work, env=agent_env(**OFFLINE))
    state, _ = _run(first.client(), ["true"], build_policy="build", **spec)
    assert state["status"] == "done"
    assert first.terminate() == 0
    second = start_agent(work, env=agent_env(**OFFLINE))
    state, output = _run(second.client(), ["true"], build_policy="use-build", **spec)
    assert state["status"] == "done" and output.startswith("Using cached build "), (state, output)
