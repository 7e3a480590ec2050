"""The sbatch command and the batch script of a run's Slurm job. Pure: what goes in decides what comes out.

The job carries everything it needs, since the login node and the compute nodes need not share a disk:
the agent (a ~80 KB zipapp, base64 in the script) and the agent's token (only in the script, which Slurm
keeps readable by the job's user and root alone; never in an argv, the environment of sbatch or the job's
Comment). The batch script writes the agent to a private folder of the first node, copies it to the
others with sbcast (multi-node jobs), and starts it with `srun` on every node of the allocation, so each
agent runs inside the allocation: Slurm's cgroups, its CUDA_VISIBLE_DEVICES, its signals.

On each node a small wrapper finds the node's address as Slurm knows it (NodeAddr), keeps environments and
build caches in a per-node folder when no other agent uses it (flock), links the uv the server shipped
before (or keeps the one it ships now for the next job), starts the agent on a free port, and prints one
line with its address and port (and the GPUs Slurm gave); the batch script collects every node's line
and publishes them at once through the job's Comment (one writer: a node's own update would overwrite
another's). The server reaches each address through its SSH connection to the login node; a multi-node
run's nodes learn each other's addresses from the same Comment. Anything that stops a node from running
the agent is published as `error=...`, so the run fails with the sentence instead of waiting.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from dstack.server.backends.base import LaunchRequest
from dstack.server.backends.slurm.inventory import Shape
from dstack.server.backends.slurm.states import TAG

AGENT_LINGER = 300  # seconds an agent waits for the server to collect its finished job
AGENT_IDLE_EXIT = 600  # seconds an agent waits for its job before it gives the allocation back
MAX_ERROR = 300


def tag(job_id: str) -> str:
    """The job's Comment at submission: lets a restarted server find a job it submitted but did not record."""
    return f"{TAG}{job_id}"


def sbatch_command(request: LaunchRequest, shape: Shape) -> list[str]:
    cpus = max(1, math.ceil(request.cpus))
    # Placement lets a task ask for the nominal size of a node whose RealMemory is a little less: ask for
    # what the node has then, or Slurm rejects the job.
    memory_mb = min(max(1, math.ceil(request.memory_gb * 1024)), shape.memory_mb or math.inf)
    args = [
        "sbatch",
        "--parsable",
        f"--job-name={request.run_name}",
        f"--comment={tag(request.job_id)}",
        f"--partition={shape.partition}",
        f"--nodes={request.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus}",
        f"--mem={int(memory_mb)}M",
        "--chdir=/tmp",  # the login node's working folder may not exist on the nodes
        "--output=/dev/null",  # the agent keeps the task's output; failures come back through the Comment
    ]
    if request.gpus:
        kind = f"{shape.gpu_type}:" if shape.gpu_type else ""
        args.append(f"--gres=gpu:{kind}{request.gpus}")
    if request.max_duration:
        # Slurm's time limit has a resolution of minutes; Slurm, not the agent, ends the job at it.
        args.append(f"--time={max(1, math.ceil(request.max_duration / 60))}")
    return args


def batch_script(
    *, job_id: str, run_name: str, token: str, agent_b64: str, uv_sha: str, nodes: int = 1
) -> str:
    if not token.replace("-", "").replace("_", "").isalnum():
        raise ValueError("the agent token must be URL-safe base64")
    values = {
        "JOB_ID": job_id,
        "RUN_NAME": run_name,
        "TOKEN": token,
        "UV_SHA": uv_sha,
        "LINGER": str(AGENT_LINGER),
        "IDLE_EXIT": str(AGENT_IDLE_EXIT),
        "MAX_ERROR": str(MAX_ERROR),
        "KILL_ON_BAD_EXIT": "1" if nodes == 1 else "0",
        "TAG": tag(job_id),
        "AGENT_B64": agent_b64,  # last: nothing is looked for in the payload
    }
    text = _template("batch.sh").replace("@@NODE@@", _template("node.sh"))
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    return text


@functools.cache
def _template(name: str) -> str:
    # Real shell files beside this module (package data), so they read and lint as shell.
    return (Path(__file__).parent / name).read_text()
