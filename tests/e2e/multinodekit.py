"""Helpers for the multi-node tests: PyTorch for the test hosts, the all-reduce script, node rows of ps.

The test hosts have no network beyond the test bridge, so a task cannot fetch PyTorch's dependencies. The
CPU wheel of torch 2.13.0 is on this machine (/opt/wheels); `wheelhouse` adds its dependencies, once per
test session, from the package registry (pip download) into a folder every host can read (not under the
hosts' private /tmp, /root, /home): the stand-in for a site's package mirror. The task installs from it
with `pip install --no-index --find-links`; the code and the agent still travel over SSH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv
from tests.infra.sshhosts import STATE_ROOT

TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
MASTER_PORT = 29500

ALL_REDUCE = f"""\
import os

import torch
import torch.distributed as dist

rank, world = int(os.environ["DSTACK_NODE_RANK"]), int(os.environ["DSTACK_NODES_NUM"])
master = os.environ["DSTACK_MASTER_NODE_IP"]
dist.init_process_group("gloo", init_method=f"tcp://{{master}}:{MASTER_PORT}", rank=rank, world_size=world)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)  # sum over the nodes: 1 + 2 + ... + world
print(f"all_reduce on rank {{rank}} of {{world}}: {{value.item():g}}", flush=True)
dist.destroy_process_group()
"""

# Every node prints what it was told about the others, one line each.
SHOW_ENV = [
    'echo "rank=$DSTACK_NODE_RANK nodes=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP"',
    'echo "gpus=$DSTACK_GPUS_PER_NODE/$DSTACK_GPUS_NUM ips=$(printf %s "$DSTACK_NODES_IPS" | paste -sd,)"',
    'echo "hostfile=$(tr " " : < "$DSTACK_MPI_HOSTFILE" | paste -sd,)"',
    'echo "hostname=$(hostname)"',
]


@pytest.fixture(scope="session")
def wheelhouse() -> Iterator[Path]:
    """torch 2.13.0 (CPU) and its dependencies, in a folder the test hosts can read."""
    if not TORCH_WHEEL.exists():
        reason = f"{TORCH_WHEEL} is missing (the CPU wheel of torch 2.13.0 for Python 3.11)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    folder = STATE_ROOT / f"wheels-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        result = subprocess.run(
            ["python3", "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-cache-dir",
             "-d", str(folder), str(TORCH_WHEEL)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"pip download of torch's dependencies failed: {result.stderr[-2000:]}")
        for path in (folder, *folder.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # the hosts' users read it (alice on Slurm)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def torch_install(wheels: Path) -> str:
    return f"pip install --quiet --no-cache-dir --no-index --find-links {wheels} torch==2.13.0"


def node_rows(env: DstackEnv, name: str) -> dict[int, str]:
    """`dstack ps -a -v`'s rows for the nodes of run `name`, by rank."""
    lines = env.run("ps", "-a", "-v", check=True).stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
    rows = {}
    for line in lines[start + 1 :]:
        words = line.split()
        if words[:1] != ["node"]:
            break
        rows[int(words[1])] = line
    return rows


def env_lines(output: str) -> dict[str, str]:
    """The `key=value` lines SHOW_ENV printed, as a dict (the first word of each line)."""
    found = {}
    for line in output.splitlines():
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep and key in ("rank", "nodes", "master", "gpus", "ips", "hostfile", "hostname"):
                found[key] = value
    return found
