"""The agent's side of today's dstack's task fields, on a real agent process: files, repos, volumes,
entrypoint and shell, and the utilization policy (with a fake nvidia-smi on the agent's PATH)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_testkit import AgentClient, AgentProcess, agent_env, code_manifest, file_member, new_job_id

from dstack.agent.utilization import UtilizationWindow, parse_utilization

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *utilization.gpu*) echo "0, $(cat "$UTILIZATION_FILE")" ;;
  *) echo "0, NVIDIA A100-SXM4-40GB, 40960, GPU-fake" ;;
esac
"""


def folder_archive(files: dict[str, str]) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [file_member(name, content.encode()) for name, content in files.items()]


def file_archive(name: str, content: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [file_member(name, content.encode())]


def test_files_are_placed_under_the_working_directory(client: AgentClient) -> None:
    code = client.upload(folder_archive({"main.sh": "echo main\n"}))
    config = client.upload(folder_archive({"a.yml": "a: 1\n", "sub/b.yml": "b: 2\n"}))
    token = client.upload(file_archive("token.txt", "secret-ish\n"))
    job = client.submit(
        ["cat conf/a.yml conf/sub/b.yml deep/er/token.txt", "sh main.sh"],
        code_hash=code,
        files=[
            {"code_hash": config, "target": "conf", "kind": "dir"},
            {"code_hash": token, "target": "deep/er/token.txt", "kind": "file", "name": "token.txt"},
        ],
    )
    assert client.wait_final(job["id"])["status"] == "done"
    assert client.read_logs(job["id"]).decode() == "a: 1\nb: 2\nsecret-ish\nmain\n"


def test_absolute_file_targets_are_refused_for_a_task_without_image(client: AgentClient) -> None:
    token = client.upload(file_archive("t.txt", "x"))
    job = client.submit(
        ["true"], files=[{"code_hash": token, "target": "/etc/t.txt", "kind": "file", "name": "t.txt"}]
    )
    state = client.wait_final(job["id"])
    assert state["status"] == "failed"
    assert state["reason"] == (
        "The files target /etc/t.txt is outside the working directory; a task without image can place files "
        "only under it"
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("upstream")
    git(path, "init", "-q", "-b", "main")
    (path / "v.txt").write_text("one\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "one")
    first = git(path, "rev-parse", "HEAD")
    git(path, "checkout", "-q", "-b", "dev")
    (path / "v.txt").write_text("dev\n")
    git(path, "commit", "-q", "-am", "dev")
    git(path, "checkout", "-q", "main")
    (path / "v.txt").write_text("two\n")
    git(path, "commit", "-q", "-am", "two")
    return path, first, git(path, "rev-parse", "HEAD")


def test_a_repo_is_cloned_at_its_branch_and_hash(
    client: AgentClient, upstream: tuple[Path, str, str]
) -> None:
    path, first, second = upstream
    url = f"file://{path}"
    cases = [({}, "two", second), ({"hash": first}, "one", first), ({"branch": "dev"}, "dev", None)]
    for extra, content, commit in cases:
        job = client.submit(["cat v.txt", "git rev-parse HEAD"], repo={"url": url, **extra})
        assert client.wait_final(job["id"], timeout=60)["status"] == "done", client.job(job["id"])
        output = client.read_logs(job["id"]).decode().splitlines()
        assert output[0] == content
        if commit is not None:
            assert output[1] == commit


def test_if_exists_decides_about_a_repo_path_that_is_not_empty(
    client: AgentClient, upstream: tuple[Path, str, str]
) -> None:
    path, _, _ = upstream
    code = client.upload(folder_archive({"lib/mine.txt": "mine\n"}))
    repo = {"url": f"file://{path}", "path": "lib"}
    refused = client.submit(["ls lib"], code_hash=code, repo=repo)
    state = client.wait_final(refused["id"], timeout=60)
    assert state["status"] == "failed"
    assert state["reason"] == (
        "The repo path lib already exists and is not empty; set if_exists: skip to keep what is there"
    )
    kept = client.submit(["ls lib"], code_hash=code, repo={**repo, "if_exists": "skip"})
    assert client.wait_final(kept["id"], timeout=60)["status"] == "done"
    assert b"mine.txt" in client.read_logs(kept["id"])


def test_a_repo_url_that_is_not_a_transport_git_may_use_is_refused(client: AgentClient) -> None:
    response = client.request(
        "POST",
        "/api/jobs",
        body={"id": new_job_id(), "run_name": "r", "commands": [], "repo": {"url": "ext::sh -c id"}},
    )
    assert response.status == 400
    assert b"Field repo.url must be an http(s), ssh, git or file URL" in response.body


def test_a_volume_appears_in_the_working_directory_of_a_process_task(
    client: AgentClient, tmp_path: Path
) -> None:
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "shared.txt").write_text("from the host\n")
    job = client.submit(
        ["cat data/shared.txt", "readlink data"],
        volumes=[{"host_path": str(tmp_path / "host"), "path": "/data"}],
    )
    assert client.wait_final(job["id"])["status"] == "done"
    assert client.read_logs(job["id"]).decode() == f"from the host\n{tmp_path / 'host'}\n"


def test_entrypoint_and_shell_of_a_process_task(client: AgentClient) -> None:
    job = client.submit(["a b", "$(id)"], entrypoint=["python3", "-c", "import sys; print(sys.argv[1:])"])
    assert client.wait_final(job["id"])["status"] == "done"
    assert client.read_logs(job["id"]).decode() == "['a b', '$(id)']\n"
    job = client.submit(["echo ${BASH_VERSION:-no-bash}"], shell="sh")
    assert client.wait_final(job["id"])["status"] == "done"
    assert client.read_logs(job["id"]).decode() == "no-bash\n"


# -- utilization policy ------------------------------------------------------------------------------------


def test_utilization_window() -> None:
    window = UtilizationWindow([0, 1], threshold=10, window=60, started=0)
    window.add(10, {0: 5, 1: 50})
    assert window.breached(30) is None  # the job has not run for a whole window yet
    window.add(40, {0: 3, 1: 40})
    window.add(61, {0: 9, 1: 5})
    assert window.breached(61) == 0  # GPU 0 stayed below 10% for the whole window
    window.add(90, {0: 50, 1: 5})
    assert window.breached(90) is None  # GPU 0 was busy within the last 60 s; GPU 1 was not always idle
    assert parse_utilization("0, 15\n1, [N/A]\nbad\n") == {0: 15.0}


@pytest.fixture
def gpu_agent(start_agent: Callable[..., AgentProcess], tmp_path: Path) -> tuple[AgentProcess, Path]:
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "nvidia-smi"
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    utilization = tmp_path / "utilization"
    utilization.write_text("3\n")
    env = agent_env(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", UTILIZATION_FILE=str(utilization))
    return start_agent(env=env), utilization


def test_a_job_whose_gpu_stays_idle_is_stopped_by_its_utilization_policy(
    gpu_agent: tuple[AgentProcess, Path],
) -> None:
    agent, _ = gpu_agent
    client = agent.client()
    try:
        policy = {"min_gpu_utilization": 10, "time_window": 1}
        job = client.submit(["sleep 600"], resources={"gpus": [0]}, utilization_policy=policy)
        state = client.wait_final(job["id"], timeout=60)
        assert state["status"] == "terminated"
        assert state["reason"] == "Terminated due to utilization policy: GPU 0 stayed below 10% for 1 s"
    finally:
        client.close()


def test_a_busy_gpu_keeps_its_job_running(gpu_agent: tuple[AgentProcess, Path]) -> None:
    agent, utilization = gpu_agent
    utilization.write_text("60\n")
    client = agent.client()
    try:
        policy = {"min_gpu_utilization": 10, "time_window": 1}
        job = client.submit(["sleep 3", "echo finished"], resources={"gpus": [0]}, utilization_policy=policy)
        state = client.wait_final(job["id"], timeout=60)
        assert state["status"] == "done", state
    finally:
        client.close()


def test_files_are_checked_like_code(client: AgentClient) -> None:
    # Refused where the agent keeps them: a `files` entry that would write outside is never stored.
    manifest, blobs = code_manifest([file_member("../outside.txt", b"x")])
    response = client.send_code(manifest, blobs)
    assert response.status == 400 and "leads outside" in response.json()["error"]
    code_hash = hashlib.sha256(manifest).hexdigest()
    refused = client.request(
        "POST",
        "/api/jobs",
        body={
            "id": new_job_id(),
            "run_name": "r",
            "commands": ["true"],
            "files": [{"code_hash": code_hash, "target": "x", "kind": "dir"}],
        },
    )
    assert refused.status == 400
    assert refused.json()["error"] == f"Code {code_hash} has not been uploaded"
