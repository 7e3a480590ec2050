"""Multi-node tasks on a fleet with `placement: cluster`, end to end through the real `dstack` command: the
session's two test hosts (real sshd's in their own namespaces, on one bridge, so they reach each other)
run the nodes of one run; PyTorch's gloo all-reduces across them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.fleetkit import FLEET, apply, logs, task, wait_status, write_fleet
from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.multinodekit import (  # noqa: F401 (wheelhouse is a fixture)
    ALL_REDUCE,
    SHOW_ENV,
    env_lines,
    node_rows,
    torch_install,
    wheelhouse,
)
from tests.infra.sshhosts import ClientKey, SSHHost

pytestmark = pytest.mark.e2e

# Host 1 of the session has one CPU: every node asks for one.
ONE_CPU = "resources:\n  cpu: 1..\n"


def _cluster(env: DstackEnv, hosts: list[SSHHost], key: ClientKey, placement: str = "cluster") -> None:
    result = apply(env, write_fleet(env.home, hosts, key, placement=placement))
    assert result.returncode == 0, result.stderr


def _gone(hosts: list[SSHHost], run: str) -> bool:
    return not any(h.processes_with_env(f"DSTACK_RUN_NAME={run}\0") for h in hosts)


def test_two_nodes_all_reduce_over_gloo_on_a_cluster_fleet(
    dstack_env: DstackEnv,
    project_dir: Path,
    fleet_hosts: list[SSHHost],
    client_key: ClientKey,
    wheelhouse: Path,  # noqa: F811
) -> None:
    _cluster(dstack_env, fleet_hosts, client_key)
    (project_dir / "allreduce.py").write_text(ALL_REDUCE)
    task(
        project_dir,
        [torch_install(wheelhouse), *SHOW_ENV, "python allreduce.py"],
        # As on any cluster, gloo is told which interface is the cluster network's.
        extra='nodes: 2\npython: "3.11"\nenv:\n  - GLOO_SOCKET_IFNAME=eth0\n' + ONE_CPU,
    )
    run = dstack_env.run("run", ".", "-y", "-n", "reduce", cwd=project_dir, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"Nodes\s+2", run.stderr), run.stderr  # the plan says how many
    addresses = sorted(h.address for h in fleet_hosts)
    # The attached CLI shows the master's output: it reduced 1 + 2 with the worker.
    assert "all_reduce on rank 0 of 2: 3" in run.stdout, run.stdout
    master = env_lines(run.stdout)
    worker_output = dstack_env.run("logs", "reduce", "--node", "1", check=True).stdout
    assert "all_reduce on rank 1 of 2: 3" in worker_output, worker_output
    worker = env_lines(worker_output)
    assert (master["rank"], worker["rank"]) == ("0", "1")
    assert master["nodes"] == worker["nodes"] == "2"
    # The addresses are the hosts' on the bridge they share; each node is a different host.
    assert sorted(master["ips"].split(",")) == addresses and master["ips"] == worker["ips"]
    assert master["master"] == worker["master"] == master["ips"].split(",")[0]
    assert master["gpus"] == worker["gpus"] == "0/0"
    assert (
        master["hostfile"]
        == worker["hostfile"]
        == ",".join(f"{ip}:slots=1" for ip in master["ips"].split(","))
    )
    by_address = {h.address: h.hostname for h in fleet_hosts}
    assert master["hostname"] == by_address[master["master"]]
    assert {master["hostname"], worker["hostname"]} == {h.hostname for h in fleet_hosts}
    # `dstack logs` shows the master's output by default; a node that does not exist is one sentence.
    assert "all_reduce on rank 0 of 2: 3" in logs(dstack_env, "reduce")
    missing = dstack_env.run("logs", "reduce", "--node", "2")
    assert missing.returncode == 1 and "Run reduce has 2 nodes (0-1); there is no node 2" in missing.stderr
    # ps -v: one row per node, with its host (a fleet host is named by its address) and status.
    rows = node_rows(dstack_env, "reduce")
    assert set(rows) == {0, 1}
    for rank, line in rows.items():
        assert " done" in line and f" {master['ips'].split(',')[rank]}" in line, line


def test_a_worker_that_fails_fails_the_run_and_stops_the_master(
    dstack_env: DstackEnv, project_dir: Path, fleet_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    _cluster(dstack_env, fleet_hosts, client_key)
    task(
        project_dir,
        [
            # The worker gives the master time to start (and print) first, even on a loaded machine.
            'if [ "$DSTACK_NODE_RANK" = 1 ]; then sleep 8; echo "worker gives up"; exit 1; fi',
            "echo master waits; sleep 600",
        ],
        extra="nodes: 2\n" + ONE_CPU,
    )
    run = dstack_env.run("run", ".", "-y", "-n", "broken", cwd=project_dir, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "master waits" in run.stdout
    # The run names the node and why; the master was stopped, and its processes are gone by now.
    rows = node_rows(dstack_env, "broken")
    worker_host = re.search(r"\s(10\.250\.\d+\.\d+)\s", rows[1])  # a fleet host is named by its address
    assert worker_host is not None, rows[1]
    assert f"node 1 ({worker_host.group(1)}): commands failed with exit code 1" in run.stderr, run.stderr
    assert _gone(fleet_hosts, "broken")
    assert "failed (1)" in rows[1] and "terminated" in rows[0], rows
    assert "terminated by the server: node 1" in rows[0]
    assert "worker gives up" in dstack_env.run("logs", "broken", "--node", "1", check=True).stdout


def test_master_done_ends_the_run_when_the_master_ends(
    dstack_env: DstackEnv, project_dir: Path, fleet_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    _cluster(dstack_env, fleet_hosts, client_key)
    task(
        project_dir,
        ['if [ "$DSTACK_NODE_RANK" = 0 ]; then echo master is done; exit 0; fi', "sleep 600"],
        extra="nodes: 2\nstop_criteria: master-done\nstartup_order: workers-first\n" + ONE_CPU,
    )
    run = dstack_env.run("run", ".", "-y", "-n", "leader", cwd=project_dir, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "master is done" in run.stdout
    assert _gone(fleet_hosts, "leader")  # the worker was stopped before the run was reported done
    rows = node_rows(dstack_env, "leader")
    assert " done" in rows[0] and " terminated" in rows[1], rows
    # (That the master started only once the worker ran is test_multinode_lifecycle's startup_order test.)


def test_all_nodes_are_placed_at_once_or_the_run_waits_whole(
    dstack_env: DstackEnv, project_dir: Path, fleet_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    one_cpu = fleet_hosts[0]
    # A fleet that does not say its hosts reach each other takes no multi-node run: one sentence.
    _cluster(dstack_env, fleet_hosts, client_key, placement="any")
    task(project_dir, ["echo node $DSTACK_NODE_RANK of $DSTACK_NODES_NUM"], extra="nodes: 2\n" + ONE_CPU)
    refused = dstack_env.run("run", ".", "-y", "-b", "ssh", cwd=project_dir, timeout=300)
    assert refused.returncode == 1
    assert f"fleet {FLEET} has placement: any (apply it with placement: cluster" in refused.stderr
    assert "backend local" not in refused.stderr  # -b ssh: only the fleet is considered

    _cluster(dstack_env, fleet_hosts, client_key)
    # The bigger host is busy with a task that holds all of it; the one-CPU host is free.
    task(project_dir, ["sleep 600"], name="busy.dstack.yml")
    busy = dstack_env.run(
        "run", ".", "-f", "busy.dstack.yml", "-y", "-d", "--cpu", "2", "-b", "ssh", "-n", "busy",
        cwd=project_dir, timeout=300,
    )  # fmt: skip
    assert busy.returncode == 0, busy.stderr
    wait_status(dstack_env, "busy", ("running",), timeout=180)
    # Without a retry limit the run fails at once: never one node started and the other waiting.
    once = dstack_env.run("run", ".", "-y", "-n", "gang-now", cwd=project_dir, timeout=300)
    assert once.returncode == 1, once.stdout + once.stderr
    assert f"fleet {FLEET} has 1 of the 2 hosts the task needs free now" in once.stderr, once.stderr
    assert _gone(fleet_hosts, "gang-now")
    # With one, it waits as a whole: nothing of it starts on the free host meanwhile.
    waiting = dstack_env.run(
        "run", ".", "-y", "-d", "-n", "gang", "--retry-limit", "10m", cwd=project_dir, timeout=300
    )
    assert waiting.returncode == 0, waiting.stderr
    wait_status(dstack_env, "gang", ("pending",))
    for _ in range(10):
        time.sleep(0.5)
        assert wait_status(dstack_env, "gang", ("pending",))["status"] == "pending"
        assert _gone([one_cpu], "gang")
        assert set(node_rows(dstack_env, "gang").values()) == {
            line for line in node_rows(dstack_env, "gang").values() if " pending" in line
        }
    dstack_env.run("stop", "busy", "-y", check=True)
    wait_status(dstack_env, "gang", ("done",), timeout=300)
    outputs = {logs(dstack_env, "gang").strip(), dstack_env.run("logs", "gang", "--node", "1").stdout.strip()}
    assert outputs == {"node 0 of 2", "node 1 of 2"}
    wait_for(lambda: _gone(fleet_hosts, "busy"), timeout=60, what="the busy task to stop")
