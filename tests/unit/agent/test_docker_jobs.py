"""Container jobs through a real agent process and a real (private) Docker daemon."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_testkit import AgentClient, AgentProcess, agent_env, file_member, wait_for
from tests.dockerd import BUSYBOX_DEFAULT_OUTPUT, BUSYBOX_IMAGE, Dockerd, dockerd  # noqa: F401

StartAgent = Callable[..., AgentProcess]
MARKER_LABEL = "label=dstack.job.marker"


@pytest.fixture
def agent(start_agent: StartAgent, tmp_path: Path, dockerd: Dockerd) -> Iterator[AgentProcess]:  # noqa: F811
    yield start_agent(tmp_path / "work", env=agent_env(**dockerd.env))
    for container in dockerd.containers(MARKER_LABEL):
        dockerd.docker("rm", "-f", container)


def _run(client: AgentClient, commands: list[str], **fields: object) -> tuple[dict[str, object], str]:
    job = client.submit(commands, image=BUSYBOX_IMAGE, **fields)
    output = client.read_logs(job["id"], timeout=120).decode()
    return client.job(job["id"]), output


def test_host_reports_the_docker_daemon(agent: AgentProcess, start_agent: StartAgent, tmp_path: Path) -> None:
    assert agent.client().get_json("/api/host")["docker"]
    without = start_agent(tmp_path / "other", env=agent_env(DOCKER_HOST=f"unix://{tmp_path}/none.sock"))
    assert without.client().get_json("/api/host")["docker"] is None


def test_output_exit_code_env_and_working_dir(agent: AgentProcess, dockerd: Dockerd) -> None:  # noqa: F811
    client = agent.client()
    code_hash = client.upload([file_member("src/app/data.txt", b"in the code\n")])
    # A name sh cannot export goes in the container's config instead; it must not break the job.
    env = {"QUOTED": "a 'b' \"c\" $d\nline two", "odd-name": "x"}
    state, output = _run(
        client,
        [
            "pwd",
            "cat data.txt",
            'printf "%s\\n" "$QUOTED"',
            "echo to stderr >&2",
            "exit 9",
        ],
        code_hash=code_hash,
        working_dir="src/app",
        env=env,
    )
    assert (state["status"], state["exit_code"]) == ("failed", 9), output
    # Docker reads stdout and stderr through two pipes: their order relative to each other is not kept.
    lines = output.splitlines()
    assert "to stderr" in lines
    assert [line for line in lines if line != "to stderr"] == [
        "/workflow/src/app",
        "in the code",
        "a 'b' \"c\" $d",
        "line two",
    ]
    assert dockerd.containers(MARKER_LABEL) == []  # removed once it ended


def test_resources_become_container_limits(agent: AgentProcess, dockerd: Dockerd) -> None:  # noqa: F811
    client = agent.client()
    job = client.submit(
        ["sleep 60"], image=BUSYBOX_IMAGE, resources={"cpus": 1.5, "memory_bytes": 256 * 1024**2}
    )
    client.wait_status(job["id"], ["running"], 60)
    (container,) = dockerd.containers(MARKER_LABEL)
    host_config = json.loads(dockerd.docker("inspect", container))[0]["HostConfig"]
    assert host_config["NanoCpus"] == 1_500_000_000
    assert host_config["Memory"] == 256 * 1024**2
    assert host_config["NetworkMode"] == "host"
    client.stop(job["id"], abort=True)
    assert client.wait_final(job["id"], 60)["status"] == "terminated"


def test_graceful_stop_reaches_every_process_in_the_container(agent: AgentProcess) -> None:
    client = agent.client()
    command = "trap 'echo child got TERM; exit 0' TERM; while :; do sleep 1; done"
    job = client.submit(
        [
            f'sh -c "{command}" &',
            "trap 'echo main got TERM; wait; exit 6' TERM",
            "echo ready",
            "sleep 300 & wait",
        ],
        image=BUSYBOX_IMAGE,
    )
    logs = f"/api/jobs/{job['id']}/logs?offset=0"
    wait_for(lambda: b"ready" in client.request("GET", logs).body, 60, "the job to be ready")
    assert client.stop(job["id"], grace_seconds=20).status == 202
    state = client.wait_final(job["id"], 30)
    output = client.read_logs(job["id"]).decode()
    assert (state["status"], state["exit_code"]) == ("terminated", 6), output
    assert "main got TERM" in output and "child got TERM" in output


def test_an_image_job_without_commands_runs_the_images_command(agent: AgentProcess) -> None:
    state, output = _run(agent.client(), [])
    assert state["status"] == "done" and output == BUSYBOX_DEFAULT_OUTPUT + "\n"


def test_a_restarted_agent_takes_over_running_containers(
    start_agent: StartAgent,
    tmp_path: Path,
    dockerd: Dockerd,  # noqa: F811
) -> None:
    # A container running the image's own command (its output comes from the daemon, not a file).
    dockerd.docker(
        "build",
        "-q",
        "-t",
        "dstack-test/waits:1",
        "-",
        input=(
            f"FROM {BUSYBOX_IMAGE}\n"
            'CMD ["/bin/sh", "-c", "echo a; while [ ! -e /workflow/go ]; do sleep 0.05; done; '
            'echo b; exit 4"]\n'
        ).encode(),
        env={"DOCKER_BUILDKIT": "0"},
    )
    work = tmp_path / "work"
    first = start_agent(work, env=agent_env(**dockerd.env))
    client = first.client()
    commands = client.submit(
        ["echo one", "while [ ! -e go ]; do sleep 0.05; done", "echo two", "exit 3"], image=BUSYBOX_IMAGE
    )
    own = client.submit([], image="dstack-test/waits:1")
    stopped = client.submit(["echo three", "sleep 300"], image=BUSYBOX_IMAGE)
    for job, first_line in ((commands, b"one\n"), (own, b"a\n"), (stopped, b"three\n")):
        wait_for(lambda j=job, f=first_line: client.read_logs_now(j["id"]) == f, 60, "the job to print")
    first.kill()
    client.close()
    for job in (commands, own):
        (work / "jobs" / job["id"] / "code" / "go").touch()  # they go on, with no agent
    second = start_agent(work, env=agent_env(**dockerd.env))
    client = second.client()
    state = client.wait_final(commands["id"], 60)
    assert (state["status"], state["exit_code"]) == ("failed", 3)
    assert client.read_logs(commands["id"]) == b"one\ntwo\n"
    state = client.wait_final(own["id"], 60)
    assert (state["status"], state["exit_code"]) == ("failed", 4)
    assert client.read_logs(own["id"]) == b"a\nb\n", second.log()
    assert client.job(stopped["id"])["status"] == "running"
    assert client.stop(stopped["id"], grace_seconds=1).status == 202
    assert client.wait_final(stopped["id"], 60)["status"] == "terminated"
    # (busybox's sh reports its foreground command's death by SIGTERM: "Terminated")
    assert client.read_logs(stopped["id"]).startswith(b"three\n")
    wait_for(lambda: dockerd.containers(MARKER_LABEL) == [], 30, "the containers to be removed")
    assert "Traceback" not in second.log()


def test_build_output_streams_and_secrets_stay_out_of_the_built_image(
    agent: AgentProcess,
    dockerd: Dockerd,  # noqa: F811
) -> None:
    client = agent.client()
    spec = {"build": ["echo building", "echo baked > /baked"], "env": {"API_TOKEN": "s3cret"}}
    state, output = _run(client, ["cat /baked"], build_policy="build", **spec)
    assert state["status"] == "done", (state, output)
    key = re.fullmatch(r"Building the environment \(image .+, build ([0-9a-f]{12})\)", output.splitlines()[0])
    assert key, output
    assert output.splitlines()[1:] == ["building", f"Build {key.group(1)} is cached for later runs", "baked"]
    tags = dockerd.docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    (image,) = [tag for tag in tags if tag.startswith(f"dstack-build:{key.group(1)}")]
    config = json.loads(dockerd.docker("image", "inspect", image))[0]["Config"]
    assert not any("s3cret" in entry for entry in config.get("Env") or [])
    assert config["Cmd"] == ["/bin/sh", "-c", f"echo {BUSYBOX_DEFAULT_OUTPUT}"]
    assert not config.get("Entrypoint")
