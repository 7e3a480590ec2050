"""The Slurm backend's pure parts: Slurm's text into shapes and states, states into run ends, a run into its
sbatch command and batch script. (The real cluster is in tests/e2e/test_slurm.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.backends.base import LaunchRequest
from dstack.server.backends.slurm.inventory import (
    Shape,
    node_state,
    parse_gres,
    parse_nodes,
    parse_partitions,
    parse_records,
    shapes,
)
from dstack.server.backends.slurm.script import batch_script, sbatch_command
from dstack.server.backends.slurm.states import (
    JobInfo,
    never_starts,
    outcome,
    parse_scontrol_job,
    parse_squeue,
    pending_message,
)
from dstack.server.config_file import SlurmClusterConfig, load_server_config

NODES = """\
NodeName=n1 Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=8 CPUTot=8 Gres=(null) NodeAddr=10.0.0.1 NodeHostName=n1 OS=Linux 6.1.0 #1 SMP PREEMPT_DYNAMIC Debian  RealMemory=64000 State=IDLE Partitions=cpu,all  CfgTRES=cpu=8
NodeName=n2 Arch=x86_64 CPUTot=8 Gres=(null) NodeAddr=10.0.0.2 RealMemory=64000 State=MIXED Partitions=cpu,all
NodeName=n3 Arch=x86_64 CPUTot=8 Gres=(null) NodeAddr=10.0.0.3 RealMemory=64000 State=IDLE+DRAIN Partitions=cpu Reason=disk died [root@2026-12-01T10:00:00]
NodeName=g1 Arch=x86_64 CPUTot=32 Gres=gpu:a100:4(S:0-1),nic:1 NodeAddr=g1.cluster RealMemory=512000 State=ALLOCATED Partitions=gpu,all
NodeName=g2 Arch=x86_64 CPUTot=32 Gres=gpu:a100:4(S:0-1) NodeAddr=g2.cluster RealMemory=512000 State=DOWN+NOT_RESPONDING Partitions=gpu,all
"""  # noqa: E501
PARTITIONS = """\
PartitionName=cpu AllowGroups=ALL Default=YES MaxTime=UNLIMITED Nodes=n[1-3] State=UP TotalCPUs=24
PartitionName=gpu AllowGroups=ALL MaxTime=2-00:00:00 Nodes=g[1-2] State=UP
PartitionName=all Nodes=n[1-2],g[1-2] State=DOWN
"""


def cluster(**extra: object) -> SlurmClusterConfig:
    return SlurmClusterConfig.model_validate(
        {"name": "hpc", "hostname": "login", "user": "alice", "identity_file": "~/.ssh/id", **extra}
    )


def test_records_keep_values_with_spaces() -> None:
    first, *_ = parse_records(NODES)
    assert first["OS"] == "Linux 6.1.0 #1 SMP PREEMPT_DYNAMIC Debian"
    assert first["RealMemory"] == "64000"
    assert parse_records(NODES)[2]["Reason"] == "disk died [root@2026-12-01T10:00:00]"


@pytest.mark.parametrize(
    ("gres", "expected"),
    [
        ("(null)", (0, None)),
        ("gpu:2", (2, None)),
        ("gpu:a100:4(S:0-1),nic:1", (4, "a100")),
        ("gpu:a100:2,gpu:v100:2", (4, None)),  # mixed types: no single type to ask for
        ("gpu:tesla:1,gpu:1", (2, None)),
    ],
)
def test_gres_gpus(gres: str, expected: tuple[int, str | None]) -> None:
    assert parse_gres(gres) == expected


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("IDLE", "idle"),
        ("MIXED", "mixed"),
        ("ALLOCATED", "allocated"),
        ("COMPLETING", "allocated"),
        ("IDLE+DRAIN", "down"),
        ("MIXED+DRAIN", "down"),
        ("DOWN+NOT_RESPONDING", "down"),
        ("IDLE*", "idle"),
        ("IDLE+POWERED_DOWN", "idle"),
    ],
)
def test_node_states(state: str, kind: str) -> None:
    assert node_state(state) == kind


def test_shapes_per_partition_with_counts_and_gpu_names() -> None:
    config = cluster(gpu_partitions=[{"gpu": "A100:80GB", "partitions": ["gpu"]}])
    listed, missing = shapes(config, parse_partitions(PARTITIONS), parse_nodes(NODES))
    assert missing == []
    by_name = {s.name: s for s in listed}
    # CPU shapes come first (a task without GPUs lands there before it takes a GPU node).
    assert [s.name for s in listed] == [
        "hpc/cpu/8xCPU-62GB",
        "hpc/all/8xCPU-62GB",
        "hpc/gpu/32xCPU-500GB-4xA100",
        "hpc/all/32xCPU-500GB-4xA100",
    ]
    cpu = by_name["hpc/cpu/8xCPU-62GB"]
    assert cpu.counts == {"idle": 1, "mixed": 1, "allocated": 0, "down": 1}
    assert cpu.note == "1 idle, 1 mixed, 0 allocated, 1 down" and cpu.unavailable_reason is None
    gpu = by_name["hpc/gpu/32xCPU-500GB-4xA100"]
    assert (gpu.gpus, gpu.gpu_type, gpu.gpu_name, gpu.gpu_memory_gb) == (4, "a100", "A100", 80.0)
    resources = gpu.resources()
    assert [g["name"] for g in resources["gpus"]] == ["A100"] * 4
    assert resources["gpus"][0]["memory_bytes"] == 80 * 1024**3
    # Not listed under gpu_partitions: the GPUs are named after their GRES type, memory unknown.
    other = by_name["hpc/all/32xCPU-500GB-4xA100"]
    assert (other.gpu_name, other.gpu_memory_gb) == ("A100", 0.0)
    assert other.unavailable_reason == "partition all is down"


def test_a_shape_with_no_usable_node_is_unavailable_and_unknown_partitions_are_named() -> None:
    config = cluster(cpu_partitions=["gpu", "nope"])
    listed, missing = shapes(
        config, parse_partitions(PARTITIONS), parse_nodes(NODES[NODES.index("NodeName=g1") :])
    )
    assert missing == ["nope"]
    [shape] = listed
    assert shape.counts == {"idle": 0, "mixed": 0, "allocated": 1, "down": 1}
    assert shape.unavailable_reason is None  # an allocated node frees up: the job queues
    shape.counts["allocated"] = 0
    assert (
        shape.unavailable_reason
        == "every node of this shape is down or drained (0 idle, 0 mixed, 0 allocated, 1 down)"
    )


def test_squeue_and_scontrol_views_of_a_job() -> None:
    jobs = parse_squeue(
        "12|PENDING|Resources||dstack:job-1\n"
        "13|RUNNING|None|n1|dstack:job-2;agent=10.0.0.1:41234;gpus=0,1;work=/tmp/d/job-13;uv=1\n"
        "14|COMPLETING|None|n1|(null)\n"
    )
    assert jobs["12"].phase == "pending" and jobs["12"].dstack_job == "job-1" and jobs["12"].agent is None
    running = jobs["13"]
    assert running.agent == ("10.0.0.1", 41234) and running.gpus == [0, 1] and running.has_uv
    assert running.work_dir == "/tmp/d/job-13"
    assert jobs["14"].phase == "running" and jobs["14"].comment == ""
    failed = parse_squeue("15|RUNNING|None|n1|dstack:job-3;error=python3 is not on PATH on n1\n")["15"]
    assert failed.error == "python3 is not on PATH on n1"
    ended = parse_scontrol_job(
        "JobId=16 JobName=run-1 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0 NodeList=n2 "
        "Comment=dstack:job-4;agent=10.0.0.2:5000 StdOut=/dev/null\n"
    )
    assert ended is not None and (ended.state, ended.exit_code, ended.agent) == (
        "FAILED",
        3,
        ("10.0.0.2", 5000),
    )
    assert parse_scontrol_job("") is None


def test_what_a_pending_reason_says() -> None:
    assert pending_message(JobInfo("7", "PENDING", "Priority", "", "")) == (
        "Slurm job 7 is pending: Priority (jobs with a higher priority come first)"
    )
    assert pending_message(JobInfo("7", "PENDING", "ReqNodeNotAvail, UnavailableNodes:n3", "", "")) == (
        "Slurm job 7 is pending: ReqNodeNotAvail, UnavailableNodes:n3"
    )
    assert (
        pending_message(JobInfo("7", "PENDING", "None", "", "")) == "Slurm job 7 is pending (just submitted)"
    )
    assert never_starts(JobInfo("7", "PENDING", "Resources", "", "")) is None
    assert never_starts(JobInfo("7", "PENDING", "PartitionTimeLimit", "", "")) == (
        "Slurm will never start job 7: PartitionTimeLimit "
        "(its time limit (max_duration) is above the partition's)"
    )


@pytest.mark.parametrize(
    ("state", "reason", "code", "status", "why"),
    [
        ("COMPLETED", "None", 0, RunStatus.DONE, None),
        ("FAILED", "NonZeroExitCode", 3, RunStatus.FAILED, TerminationReason.COMMANDS_FAILED),
        ("CANCELLED", "None", 0, RunStatus.TERMINATED, TerminationReason.CANCELLED_OUTSIDE),
        ("TIMEOUT", "TimeLimit", 0, RunStatus.TERMINATED, TerminationReason.MAX_DURATION_EXCEEDED),
        ("PREEMPTED", "None", 0, RunStatus.TERMINATED, TerminationReason.PREEMPTED),
        ("NODE_FAIL", "None", 0, RunStatus.FAILED, TerminationReason.HOST_LOST),
        ("OUT_OF_MEMORY", "None", 0, RunStatus.FAILED, TerminationReason.COMMANDS_FAILED),
        ("FAILED", "BadConstraints", 0, RunStatus.FAILED, TerminationReason.FAILED_TO_START),
    ],
)
def test_how_a_job_slurm_ended_ends_the_run(
    state: str, reason: str, code: int, status: RunStatus, why: TerminationReason | None
) -> None:
    end = outcome(JobInfo("9", state, reason, "n1", "", code))
    assert (end.status, end.reason) == (status, why)


def test_a_completing_job_settles_by_its_reason() -> None:
    timed_out = JobInfo("9", "COMPLETING", "TimeLimit", "n1", "")
    assert timed_out.settled().state == "TIMEOUT"
    quiet = JobInfo("9", "COMPLETING", "None", "n1", "")
    assert quiet.settled().state == "COMPLETING"  # still ending: ask again
    # Its agent was holding the job for the server, so nothing of dstack's ended it: cancelled.
    assert quiet.settled(agent_waits=True).state == "CANCELLED"


def _shape(**extra: object) -> Shape:
    values: dict[str, object] = {
        "cluster": "hpc", "partition": "gpu", "cpus": 32, "memory_mb": 512000, "arch": "x86_64", "gpus": 4,
        "gpu_type": "a100", "gpu_name": "A100", "gpu_memory_gb": 80.0, **extra,
    }  # fmt: skip
    return Shape(**values)  # type: ignore[arg-type]


def _request(**extra: object) -> LaunchRequest:
    values: dict[str, object] = {
        "job_id": "0f5e", "run_name": "brave-fox-1", "cpus": 4, "memory_gb": 16, "gpus": 2,
        "max_duration": 5401, **extra,
    }  # fmt: skip
    return LaunchRequest(**values)  # type: ignore[arg-type]


def test_sbatch_asks_for_what_the_run_asks() -> None:
    command = sbatch_command(_request(), _shape())
    assert command == [
        "sbatch", "--parsable", "--job-name=brave-fox-1", "--comment=dstack:0f5e", "--partition=gpu",
        "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=4", "--mem=16384M", "--chdir=/tmp",
        "--output=/dev/null", "--gres=gpu:a100:2", "--time=91",
    ]  # fmt: skip
    # A nominal size a node reports a little less of is asked as what the node has; no GPU, no limit.
    plain = sbatch_command(
        _request(memory_gb=64, gpus=0, max_duration=None, nodes=2), _shape(memory_mb=64000)
    )
    assert "--mem=64000M" in plain and "--nodes=2" in plain
    assert not [a for a in plain if a.startswith(("--gres", "--time"))]
    untyped = sbatch_command(_request(gpus=1), _shape(gpu_type=None))
    assert "--gres=gpu:1" in untyped and "--time=91" in untyped


def test_the_batch_script_is_valid_bash_and_holds_the_token_only_once(tmp_path: Path) -> None:
    token = "tok_en-123ABC"
    text = batch_script(
        job_id="0f5e", run_name="brave-fox-1", token=token, agent_b64="UEsDBA==", uv_sha="ab12"
    )
    assert text.startswith("#!/bin/bash\n")
    assert text.count(token) == 1 and f"export DSTACK_AGENT_TOKEN='{token}'" in text
    assert "@@" not in text  # every placeholder filled
    assert "uv-ab12" in text and "--one-job" in text and 'Comment="dstack:0f5e;$1"' in text
    script = tmp_path / "batch.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    node = text.split("<<'DSTACK_NODE_END'\n", 1)[1].split("\nDSTACK_NODE_END\n", 1)[0]
    (tmp_path / "node.sh").write_text(node)
    checked = subprocess.run(["bash", "-n", str(tmp_path / "node.sh")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    with pytest.raises(ValueError):
        batch_script(job_id="x", run_name="r", token="it's; rm -rf /", agent_b64="", uv_sha="")


@pytest.mark.parametrize(
    ("cluster_yaml", "message"),
    [
        ("{name: hpc, hostname: h, user: u}", "backends.0.clusters.0.identity_file: Field required"),
        (
            "{name: hpc, hostname: h, user: u, identity_file: k, partitons: [a]}",
            "backends.0.clusters.0.partitons: unknown key; allowed: name, hostname, port, user, "
            "identity_file, cpu_partitions, gpu_partitions, container_runtime",
        ),
        (
            "{name: hpc, hostname: h, user: u, identity_file: k, "
            "gpu_partitions: [{gpu: A100, partitions: [g]}]}",
            "backends.0.clusters.0.gpu_partitions.0.gpu: 'A100' is not NAME:MEMORY such as A100:80GB",
        ),
        (
            "{name: 'a b', hostname: h, user: u, identity_file: k}",
            "backends.0.clusters.0.name: 'a b' is not a",
        ),
        (
            "{name: hpc, hostname: h, user: u, identity_file: k, port: 0}",
            "backends.0.clusters.0.port: Input should",
        ),
    ],
)
def test_slurm_config_mistakes_are_one_sentence(tmp_path: Path, cluster_yaml: str, message: str) -> None:
    from dstack.server.config_file import ServerConfigError

    path = tmp_path / "config.yml"
    path.write_text(f"backends:\n  - type: slurm\n    clusters:\n      - {cluster_yaml}\n")
    with pytest.raises(ServerConfigError) as caught:
        load_server_config(path)
    assert str(caught.value).removeprefix(f"{path}: ").startswith(message), str(caught.value)


def test_slurm_config_names_clusters_once_and_knows_its_backend_types(tmp_path: Path) -> None:
    from dstack.server.config_file import ServerConfigError

    path = tmp_path / "config.yml"
    one = "{name: hpc, hostname: h, user: u, identity_file: k}"
    path.write_text(f"backends:\n  - type: slurm\n    clusters: [{one}, {one}]\n")
    with pytest.raises(ServerConfigError, match="cluster hpc is listed 2 times"):
        load_server_config(path)
    path.write_text("backends:\n  - type: kubernetes\n")
    with pytest.raises(
        ServerConfigError,
        match=r"backends\.0: unknown backend type 'kubernetes'; use one of: local, ssh, slurm",
    ):
        load_server_config(path)
    path.write_text(f"backends:\n  - type: local\n  - type: slurm\n    clusters: [{one}]\n")
    assert [b.type for b in load_server_config(path).backends] == ["local", "slurm"]
