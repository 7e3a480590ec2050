"""Multi-node tasks on a real Slurm cluster (tests/infra/slurm.py) through the real `dstack` command: one
Slurm job with --nodes N takes the nodes of partition `all`, each node's agent publishes its address (the
node's NodeAddr), and PyTorch's gloo all-reduces across the compute nodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.multinodekit import (  # noqa: F401 (wheelhouse is a fixture)
    ALL_REDUCE,
    SHOW_ENV,
    env_lines,
    node_rows,
    torch_install,
    wheelhouse,
)
from tests.e2e.test_slurm import Slurm, slurm  # noqa: F401 (a fixture: the server on the test cluster)

pytestmark = pytest.mark.e2e

# A node of the test cluster has 4 CPUs and 16 GB: every node asks for a little of it.
SMALL = "resources:\n  cpu: 1\n  memory: 1GB\n"


def _task(lines: list[str], extra: str) -> str:
    return (
        "type: task\nnodes: 2\n"
        + extra
        + SMALL
        + "commands:\n"
        + "".join(f"  - {line!r}\n" for line in lines)
    )


def test_two_slurm_nodes_all_reduce_over_gloo(slurm: Slurm, wheelhouse: Path) -> None:  # noqa: F811
    cluster = slurm.cluster
    (slurm.project / "allreduce.py").write_text(ALL_REDUCE)
    name = slurm.task(
        "reduce",
        _task(
            [torch_install(wheelhouse), *SHOW_ENV, "python allreduce.py"],
            'python: "3.11"\nenv:\n  - GLOO_SOCKET_IFNAME=eth0\n',
        ),
    )
    result = slurm.run("run", ".", "-f", name, "-b", "slurm", "-n", "reduce", "-y", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Nodes\s+2", result.stderr) and "2x hpc/all/" in result.stderr, result.stderr
    assert "all_reduce on rank 0 of 2: 3" in result.stdout, result.stdout
    worker_output = slurm.run("logs", "reduce", "--node", "1").stdout
    assert "all_reduce on rank 1 of 2: 3" in worker_output, worker_output
    master, worker = env_lines(result.stdout), env_lines(worker_output)
    # Every node's address is its NodeAddr, as the other nodes reach it; one Slurm job, both nodes.
    addresses = {n.hostname: n.address for n in cluster.nodes}
    assert {master["hostname"], worker["hostname"]} == set(addresses)
    assert (
        master["ips"] == worker["ips"] == f"{addresses[master['hostname']]},{addresses[worker['hostname']]}"
    )
    assert master["master"] == worker["master"] == addresses[master["hostname"]]
    assert (master["rank"], worker["rank"], master["nodes"]) == ("0", "1", "2")
    assert master["hostfile"] == ",".join(f"{ip}:slots=1" for ip in master["ips"].split(","))
    rows = node_rows(slurm.env, "reduce")
    assert master["hostname"] in rows[0] and worker["hostname"] in rows[1], rows
    assert all(" done" in row for row in rows.values()), rows
    ps = slurm.run("ps", "-a", "-v").stdout
    assert re.search(r"slurm job \d+ on ", ps), ps
    assert cluster.jobs() == []


def test_a_failed_worker_fails_the_run_stops_the_master_and_ends_the_slurm_job(slurm: Slurm) -> None:  # noqa: F811
    name = slurm.task(
        "broken",
        _task(
            [
                'if [ "$DSTACK_NODE_RANK" = 1 ]; then sleep 1; echo "worker gives up"; exit 3; fi',
                "echo master waits; sleep 600",
            ],
            "",
        ),
    )
    result = slurm.run("run", ".", "-f", name, "-b", "slurm", "-n", "broken", "-y", timeout=300)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "master waits" in result.stdout
    rows = node_rows(slurm.env, "broken")
    worker_node = next(n.hostname for n in slurm.cluster.nodes if n.hostname in rows[1])
    assert f"node 1 ({worker_node}): commands failed with exit code 3" in result.stderr, result.stderr
    assert "terminated" in rows[0] and "failed (3)" in rows[1], rows
    # Ended means ended: the Slurm job is gone by the time the run says so.
    assert slurm.cluster.jobs() == []


def test_the_nodes_wait_for_slurm_to_start_them_together_and_master_done_ends_the_run(
    slurm: Slurm,  # noqa: F811
) -> None:
    cluster = slurm.cluster
    # More nodes than any partition has: one sentence, nothing submitted.
    three = slurm.task("three", _task(["hostname"], "").replace("nodes: 2", "nodes: 3"))
    refused = slurm.run("run", ".", "-f", three, "-b", "slurm", "-y")
    assert refused.returncode == 1
    assert (
        "partition all of cluster hpc has 2 nodes that fit a node of the task, it needs 3" in refused.stderr
    )
    assert "partition cpu of cluster hpc has 1 node that fits" in refused.stderr
    assert cluster.jobs() == []
    # The cpu node is busy with a job that holds all of it: the two-node job waits in Slurm's queue, whole.
    slurm.submit(slurm.task("busy", "type: task\ncommands: [sleep 600]\nresources:\n  cpu: 4\n"), "busy")
    slurm.wait_status("busy", ("running",))
    gang = slurm.task(
        "gang",
        _task(
            ['if [ "$DSTACK_NODE_RANK" = 0 ]; then echo master is done; exit 0; fi', "sleep 600"],
            "stop_criteria: master-done\n",
        ),
    )
    slurm.submit(gang, "gang")
    client = slurm.api()
    wait_for(
        lambda: "Resources" in str(client.get_run("gang")["status_message"]),
        timeout=120,
        what="the run to wait for Slurm's resources",
    )
    assert client.get_run("gang")["status"] == "pending"
    job = slurm.slurm_job("gang")
    assert cluster.job_field(job, "JobState") == "PENDING"  # not one node of it runs
    assert cluster.job_field(job, "NumNodes") in ("2", "2-2")  # a pending job shows its range
    slurm.run("stop", "busy", "-y")
    done = slurm.wait_status("gang", ("done", "failed", "terminated"), timeout=300)
    assert done["status"] == "done", done
    assert "master is done" in slurm.run("logs", "gang").stdout
    rows = node_rows(slurm.env, "gang")
    assert " done" in rows[0] and " terminated" in rows[1], rows
    wait_for(lambda: cluster.jobs() == [], timeout=60, what="the Slurm jobs to leave the queue")
