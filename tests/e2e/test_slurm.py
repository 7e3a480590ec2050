"""Runs on a real Slurm cluster (tests/infra/slurm.py) through the real `dstack` command: each run is one
Slurm job, its task runs through the agent the job starts on its node, and the server reaches that agent
only through its SSH connection to the login node."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dstack.api.client import Client
from dstack.api.config import load_config
from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.portkit import Attached, free_port
from tests.infra.slurm import SlurmCluster
from tests.infra.sshhosts import SSHHost, make_key

pytestmark = pytest.mark.e2e


@dataclass
class Slurm:
    env: DstackEnv
    cluster: SlurmCluster
    project: Path

    def task(self, name: str, text: str) -> str:
        (self.project / f"{name}.dstack.yml").write_text(text)
        return f"{name}.dstack.yml"

    def run(self, *args: str, timeout: float = 240) -> object:
        return self.env.run(*args, cwd=self.project, timeout=timeout)

    def submit(self, configuration: str, name: str, *extra: str) -> None:
        """A detached run (the CLI returns once it is submitted)."""
        result = self.env.run(
            "run", ".", "-f", configuration, "-b", "slurm", "-n", name, "-d", "-y", *extra, cwd=self.project
        )
        assert result.returncode == 0, result.stderr

    def api(self) -> Client:
        entry = load_config(self.env.home / ".dstack" / "config.yml").default("main")
        assert entry is not None
        return Client(entry.url, entry.token, entry.name)

    def wait_status(self, name: str, statuses: tuple[str, ...], timeout: float = 180) -> dict[str, object]:
        client = self.api()

        def reached() -> dict[str, object] | None:
            run = client.get_run(name)
            return run if run["status"] in statuses else None

        return wait_for(
            reached, timeout=timeout, what=f"run {name} to be {' or '.join(statuses)}", interval=0.2
        )

    def slurm_job(self, name: str) -> str:
        instance = str(self.api().get_run(name).get("instance") or "")
        match = re.search(r"slurm job (\d+)", instance)
        assert match, instance
        return match.group(1)


def write_server_config(env: DstackEnv, *backends: dict[str, object]) -> None:
    path = env.home / ".dstack" / "server" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"backends": list(backends)}))


@pytest.fixture
def slurm(dstack_env: DstackEnv, slurm_cluster: SlurmCluster, project_dir: Path) -> Iterator[Slurm]:
    write_server_config(dstack_env, slurm_cluster.backend_config())
    try:
        yield Slurm(dstack_env, slurm_cluster, project_dir)
    finally:
        dstack_env.cleanup()  # the server first: nothing may submit again while the cluster is cleaned
        slurm_cluster.cancel_all()
        slurm_cluster.wait_until_idle(timeout=120)


def test_output_streams_and_the_exit_code_returns(slurm: Slurm) -> None:
    cluster = slurm.cluster
    name = slurm.task(
        "hi", "type: task\ncommands:\n  - echo hello from $(hostname) in job $SLURM_JOB_ID\n  - exit 3\n"
    )
    result = slurm.run("run", ".", "-f", name, "-b", "slurm", "-n", "hi", "-y")
    assert result.returncode == 3, result.stderr
    match = re.search(rf"hello from {cluster.cpu_node.hostname} in job (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert "commands failed with exit code 3" in result.stderr
    # What the job was: `ps -v` names the Slurm job; its output stays readable; nothing is left queued.
    ps = slurm.run("ps", "-a", "-v")
    assert f"slurm job {match.group(1)} on {cluster.cpu_node.hostname}" in ps.stdout
    assert slurm.run("logs", "hi").stdout == result.stdout
    assert cluster.jobs() == []
    # The server shipped its uv for the task's Python environment, and the node keeps it for the next job.
    kept = cluster.cpu_node.exec("sh", "-c", f"ls /home/{cluster.user}/.dstack/slurm/bin")
    assert re.search(r"^uv-[0-9a-f]{16}$", kept.stdout, re.MULTILINE), kept


def test_offers_are_the_partitions_node_shapes(slurm: Slurm) -> None:
    offers = slurm.run("offer", "-b", "slurm")
    assert offers.returncode == 0, offers.stderr
    assert re.search(
        r"slurm +hpc +hpc/cpu/4xCPU-16GB +4 CPUs, 16GB memory, no GPU .* 1 idle, 0 mixed", offers.stdout
    )
    assert re.search(r"hpc/gpu/4xCPU-16GB-2xT4 +4 CPUs, 16GB memory, 2xT4 \(16GB\)", offers.stdout)
    # A partition too small is listed last, with why; a request nothing fits is one sentence.
    big = slurm.run("offer", "-b", "slurm", "--cpu", "8")
    assert big.returncode == 1
    assert re.search(r"hpc/cpu/4xCPU-16GB .* no fit: the task needs 8 CPUs; it has 4 CPUs", big.stdout)
    run = slurm.run("run", ".", "-f", slurm.task("big", "type: task\ncommands: [hostname]\n"), "-b", "slurm",
                    "--cpu", "8", "-y")  # fmt: skip
    assert run.returncode == 1
    assert "No offer has 8 CPUs: partition cpu of cluster hpc has 4 CPUs" in run.stderr
    # An image needs a container runtime the cluster declares; this one declares none.
    image = slurm.task("image", "type: task\nimage: python:3.11\ncommands: [hostname]\n")
    refused = slurm.run("run", ".", "-f", image, "-b", "slurm", "-y")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "No offer can run containers: Slurm cluster hpc declares no container runtime" in refused.stderr
    assert slurm.cluster.jobs() == []  # nothing was submitted


def test_stop_cancels_the_job(slurm: Slurm) -> None:
    slurm.submit(slurm.task("sleepy", "type: task\ncommands:\n  - echo started\n  - sleep 1000\n"), "sleepy")
    slurm.wait_status("sleepy", ("running",))
    job = slurm.slurm_job("sleepy")
    assert slurm.cluster.jobs() == [job]
    stop = slurm.run("stop", "sleepy", "-y")
    assert stop.returncode == 0 and "Stopped" in stop.stderr
    run = slurm.api().get_run("sleepy")
    assert (run["status"], run["termination_reason"]) == ("terminated", "stopped_by_user")
    assert slurm.cluster.jobs() == []  # ended means ended: Slurm's queue is empty when the run says so
    assert slurm.run("logs", "sleepy").stdout.startswith("started\n")


def test_a_second_whole_node_job_waits_in_slurms_queue(slurm: Slurm) -> None:
    whole = "type: task\nresources:\n  cpu: 4\ncommands:\n  - echo $1 on $(hostname)\n  - sleep {}\n"
    slurm.submit(slurm.task("first", whole.format(6).replace("$1", "first")), "first")
    slurm.wait_status("first", ("running",))
    name = slurm.task("second", whole.format(0).replace("$1", "second"))
    second = Attached(
        slurm.env, "run", ".", "-f", name, "-b", "slurm", "-n", "second", "-y", cwd=slurm.project
    )
    try:
        # No --retry-limit: it fits the partition, so it queues in Slurm rather than failing.
        second.wait_for(r"Slurm job \d+ is pending: .*(Resources|Priority)")
        assert slurm.api().get_run("second")["status"] == "pending"
        assert slurm.api().get_run("first")["status"] == "running"
        assert second.wait(timeout=180) == 0
        assert any("second on" in line for line in second.stdout)
    finally:
        second.stop()
    first, later = slurm.api().get_run("first"), slurm.api().get_run("second")
    assert first["status"] == "done" and first["finished_at"] <= later["finished_at"]


def test_max_duration_ends_the_job_at_slurms_time_limit(slurm: Slurm) -> None:
    text = "type: task\nmax_duration: 1m\ncommands:\n  - echo started\n  - sleep 1000\n"
    slurm.submit(slurm.task("limited", text), "limited")
    slurm.wait_status("limited", ("running",))
    job = slurm.slurm_job("limited")
    assert slurm.cluster.job_field(job, "TimeLimit") == "00:01:00"
    run = slurm.wait_status("limited", ("terminated", "failed", "done"), timeout=300)
    assert (run["status"], run["termination_reason"]) == ("terminated", "max_duration_exceeded"), run
    assert "time limit" in str(run["termination_message"])
    assert slurm.cluster.job_field(job, "JobState") == "TIMEOUT"
    assert slurm.run("logs", "limited").stdout.startswith("started\n")


def test_scancel_outside_dstack_ends_the_run(slurm: Slurm) -> None:
    slurm.submit(
        slurm.task("cancelled", "type: task\ncommands:\n  - echo started\n  - sleep 1000\n"), "cancelled"
    )
    slurm.wait_status("cancelled", ("running",))
    job = slurm.slurm_job("cancelled")
    scancel = slurm.cluster.slurm("scancel", job)
    assert scancel.returncode == 0, scancel.stderr
    run = slurm.wait_status("cancelled", ("terminated", "failed", "done"))
    assert (run["status"], run["termination_reason"]) == ("terminated", "cancelled_outside_dstack"), run
    assert f"Slurm job {job} was cancelled" in str(run["termination_message"])
    assert slurm.cluster.jobs() == []


def test_a_port_of_the_compute_node_answers_on_loopback(slurm: Slurm) -> None:
    port = free_port()
    (slurm.project / "index.html").write_text("served by a compute node\n")
    text = f"type: task\nports: [{port}]\ncommands:\n  - python3 -m http.server {port} --bind 0.0.0.0\n"
    name = slurm.task("web", text)
    attached = Attached(
        slurm.env, "run", ".", "-f", name, "-b", "slurm", "-n", "web", "-y", cwd=slurm.project
    )
    try:
        url = attached.url_for(port, timeout=240)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/index.html", timeout=60) as response:
            assert response.read() == b"served by a compute node\n"
    finally:
        attached.stop()
    aborted = slurm.run("stop", "web", "-x", "-y")
    assert aborted.returncode == 0 and "Aborted" in aborted.stderr
    assert slurm.api().get_run("web")["status"] == "aborted"
    assert slurm.cluster.jobs() == []


def test_one_gpu_is_the_one_slurm_allocated(slurm: Slurm) -> None:
    cluster = slurm.cluster
    show = "type: task\ncommands:\n  - echo gpus=$CUDA_VISIBLE_DEVICES job=$SLURM_JOB_ID\n  - sleep {}\n"
    small = ("--gpu", "1", "--cpu", "1", "--memory", "2GB")  # two such jobs fit the GPU node at once
    slurm.submit(slurm.task("holder", show.format(1000)), "holder", *small)
    slurm.wait_status("holder", ("running",))
    result = slurm.run(
        "run", ".", "-f", slurm.task("second-gpu", show.format(0)), "-b", "slurm", *small, "-y"
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"gpus=(\S*) job=(\d+)", result.stdout)
    assert match, result.stdout
    holder = cluster.slurm("scontrol", "show", "job", "-d", slurm.slurm_job("holder")).stdout
    held = re.search(r"GRES=gpu:1\(IDX:(\d)\)", holder)
    assert held, holder
    # The task sees exactly the GPU Slurm gave its job: the other one of the node's two.
    assert match.group(1) == str(1 - int(held.group(1)))
    assert slurm.run("stop", "holder", "-y").returncode == 0


def test_cluster_faults_are_one_sentence(
    dstack_env: DstackEnv,
    slurm_cluster: SlurmCluster,
    make_ssh_host: object,
    tmp_path: Path,
    project_dir: Path,
) -> None:
    network = slurm_cluster.network
    stranger = make_key(tmp_path / "stranger" / "id_ed25519")
    no_slurm: SSHHost = make_ssh_host(users=("alice",))  # type: ignore[operator]
    no_slurm.sshd_config["SetEnv"] = "PATH=/nonexistent"
    no_slurm.stop_sshd()
    no_slurm.start_sshd()
    good = slurm_cluster.backend_config()["clusters"][0]  # type: ignore[index]
    clusters = [
        {**good, "name": "gone", "hostname": f"10.250.{network.subnet}.250"},  # nobody has this address
        {**good, "name": "refused", "identity_file": str(stranger.path)},
        {**good, "name": "bare", "hostname": no_slurm.address},
        {**good, "name": "typo", "cpu_partitions": ["cpu", "cpuu"]},
    ]
    write_server_config(dstack_env, {"type": "slurm", "clusters": clusters})
    offers = dstack_env.run("offer", "-b", "slurm", cwd=project_dir, timeout=180)
    text = offers.stdout
    assert re.search(
        r"gone .* unavailable: Slurm cluster gone: 10\.250\.\d+\.250(:22)? (is unreachable|did not answer)",
        text,
    )
    assert "unavailable: Slurm cluster refused: alice@" in text and "refused the key" in text
    assert "unavailable: sbatch is not on PATH on the login node alice@" in text
    assert "unavailable: Slurm cluster typo has no partition cpuu (its partitions: cpu, gpu, all)" in text
    # The good partitions of `typo` are offered as usual; a run on an unreachable cluster is one sentence.
    assert re.search(r"typo +typo/cpu/4xCPU-16GB .* available", text)
    task = project_dir / "t.dstack.yml"
    task.write_text("type: task\nregions: [gone]\ncommands: [hostname]\n")
    run = dstack_env.run("run", ".", "-f", "t.dstack.yml", "-b", "slurm", "-y", cwd=project_dir, timeout=180)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert re.search(
        r"No host is available now \(cluster gone: Slurm cluster gone: 10\.250\.\d+\.250", run.stderr
    )
    slurm_cluster.wait_until_idle()


def test_a_submission_slurm_rejects_is_quoted(slurm: Slurm) -> None:
    # The gpu partition allows an hour (MaxTime=60, EnforcePartLimits=ALL): Slurm refuses a 2 h job.
    text = "type: task\nmax_duration: 2h\ncommands: [hostname]\n"
    result = slurm.run("run", ".", "-f", slurm.task("long", text), "-b", "slurm", "--gpu", "1", "-y")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert 'failed to start: Slurm rejected the job: "' in result.stderr
    assert "time limit" in result.stderr.lower()
    assert slurm.cluster.jobs() == []


def test_a_build_is_cached_on_its_node_for_the_next_job(slurm: Slurm) -> None:
    text = 'type: task\npython: "3.11"\nbuild:\n  - echo building now\ncommands:\n  - echo task ran\n'
    name = slurm.task("built", text)
    first = slurm.run("run", ".", "-f", name, "-b", "slurm", "--build", "-y")
    assert first.returncode == 0, first.stderr
    key = re.search(r"Build ([0-9a-f]{12}) is cached for later runs", first.stdout)
    assert key and "building now" in first.stdout, first.stdout
    # Another Slurm job, another agent, the same node: the build is there (no shared disk was used).
    second = slurm.run("run", ".", "-f", name, "-b", "slurm", "-y")
    assert second.returncode == 0, second.stderr
    assert (
        second.stdout.startswith(f"Using cached build {key.group(1)} ")
        and "building now" not in second.stdout
    )
    assert second.stdout.rstrip().endswith("task ran")


def test_reload_reaches_the_task_on_its_node(slurm: Slurm) -> None:
    (slurm.project / "message.txt").write_text("first\n")
    text = "type: task\ncommands:\n  - while true; do cat message.txt; sleep 0.2; done\n"
    name = slurm.task("watch", text)
    cli = Attached(slurm.env, "run", ".", "-f", name, "-b", "slurm", "-n", "watch", "-y", "--reload",
                   cwd=slurm.project)  # fmt: skip
    try:
        cli.wait_for("^first$", stream="stdout", timeout=240)
        (slurm.project / "message.txt").write_text("edited on the laptop\n")
        cli.wait_for("^edited on the laptop$", stream="stdout", timeout=60)
    finally:
        cli.stop()
    assert slurm.run("stop", "watch", "-y").returncode == 0


def test_a_restarted_server_finds_its_slurm_job(slurm: Slurm) -> None:
    text = "type: task\ncommands:\n  - echo before\n  - sleep 8\n  - echo after\n"
    slurm.submit(slurm.task("survivor", text), "survivor")
    slurm.wait_status("survivor", ("running",))
    job = slurm.slurm_job("survivor")
    server = slurm.env.server_pid()
    assert server is not None
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{server}").exists(), timeout=10, what="the server to die")
    assert slurm.cluster.jobs() == [job]  # the task goes on without the server
    slurm.env.run("ps", cwd=slurm.project, check=True)  # restarts the embedded server
    run = slurm.wait_status("survivor", ("done", "failed", "terminated"), timeout=120)
    assert run["status"] == "done", run
    assert slurm.run("logs", "survivor").stdout == "before\nafter\n"
    assert slurm.cluster.jobs() == []


def test_a_lost_login_node_ends_the_run_and_its_job_is_cancelled_once_it_answers(slurm: Slurm) -> None:
    slurm.submit(
        slurm.task("cut-off", "type: task\ncommands:\n  - echo started\n  - sleep 1000\n"), "cut-off"
    )
    slurm.wait_status("cut-off", ("running",))
    job = slurm.slurm_job("cut-off")
    login = slurm.cluster.login.ns
    login.cut()  # the server can no longer reach the cluster; the job itself goes on
    try:
        run = slurm.wait_status("cut-off", ("failed", "terminated", "done"), timeout=240)
        assert (run["status"], run["termination_reason"]) == ("failed", "host_lost"), run
        assert slurm.cluster.jobs() == [job]  # left running while nobody could stop it
    finally:
        login.restore()
    # Whatever it left is stopped as soon as the login node answers again.
    wait_for(lambda: slurm.cluster.jobs() == [], timeout=120, what="the orphaned Slurm job to be cancelled")
    assert slurm.run("logs", "cut-off").stdout.startswith("started\n")
