"""A multi-node run's life on a fleet with `placement: cluster`, through the real `dstack` command: the
ports come from the master, `dstack attach --node` follows a worker, `dstack stop` stops every node, the
nodes start in `startup_order`, a lost node fails the run and stops the others; and a backend that cannot
run several nodes (local) says so in one sentence.

One server and one fleet (the session's two test hosts) serve the whole module, so the fleet is applied
and its agents installed once."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fleetkit import apply, task, wait_status, write_fleet
from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.multinodekit import node_rows
from tests.e2e.portkit import Attached, free_port
from tests.infra.sshhosts import STATE_ROOT, ClientKey, SSHHost

pytestmark = pytest.mark.e2e

GRACE = 30  # seconds a silent host keeps its jobs before they end `host lost` (this module's server)
NODES = "nodes: 2\nresources:\n  cpu: 1..\n"  # host 1 of the session has one CPU


class Cluster:
    def __init__(self, env: DstackEnv, hosts: list[SSHHost]) -> None:
        self.env = env
        self.hosts = hosts

    def project(self, name: str) -> Path:
        path = self.env.home / f"project-{name}"
        path.mkdir()
        return path

    def gone(self, run: str, hosts: list[SSHHost] | None = None) -> bool:
        return not any(h.processes_with_env(f"DSTACK_RUN_NAME={run}\0") for h in hosts or self.hosts)

    def host_of(self, run: str, rank: int) -> SSHHost:
        """The host node `rank` of `run` is on, by the address `ps -v` names it with."""
        row = node_rows(self.env, run)[rank]
        return next(h for h in self.hosts if re.search(rf"\s{re.escape(h.address)}\s", row + " "))


@pytest.fixture(scope="module")
def cluster(
    ssh_hosts: list[SSHHost], client_key: ClientKey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    env = DstackEnv(tmp_path_factory.mktemp("multinode") / "home")
    env.env["DSTACK_SERVER_HOST_LOST_SECONDS"] = str(GRACE)
    try:
        result = apply(env, write_fleet(env.home, ssh_hosts, client_key, placement="cluster"))
        assert result.returncode == 0, result.stdout + result.stderr
        yield Cluster(env, ssh_hosts)
    finally:
        env.cleanup()
        for host in ssh_hosts:
            host.kill_processes()  # the session's hosts are left as they were found


def _output(env: DstackEnv, run: str, rank: int) -> str:
    return env.run("logs", run, "--node", str(rank), check=True).stdout


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url + "/index.html", timeout=60) as response:
        return str(response.read().decode().strip())


def test_ports_are_the_masters_attach_follows_any_node_and_stop_stops_every_node(cluster: Cluster) -> None:
    env, project = cluster.env, cluster.project("ported")
    port = 8731
    task(
        project,
        ["hostname > index.html", 'echo "node $DSTACK_NODE_RANK serves"', f"python3 -m http.server {port}"],
        extra=NODES + f"ports:\n  - {port}\n",
    )
    local = free_port()
    attached = Attached(env, "run", ".", "-y", "-n", "ported", "-p", f"{local}:{port}", cwd=project)
    try:
        url = attached.wait_for(rf"Port {port} is up at (http://127\.0\.0\.1:{local})").group(1)
        master = cluster.host_of("ported", 0)
        assert _fetch(url) == master.hostname  # the port is the master node's
        attached.wait_for(r"^node 0 serves$", stream="stdout")
    finally:
        attached.stop()
    assert "node 1 serves" not in attached.stdout  # the attached CLI shows the master's output
    worker = cluster.host_of("ported", 1)
    assert worker is not master
    wait_for(lambda: "node 1 serves" in _output(env, "ported", 1), timeout=120, what="node 1 to serve")
    local = free_port()
    follower = Attached(env, "attach", "ported", "--node", "1", "-p", f"{local}:{port}")
    try:
        follower.wait_for(r"^node 1 serves$", stream="stdout")
        assert "node 0 serves" not in follower.stdout
        # Whichever node's output it shows, the forwarded port is still the master's.
        assert _fetch(follower.url_for(port)) == master.hostname
    finally:
        follower.stop()
    assert not cluster.gone("ported", [master]) and not cluster.gone("ported", [worker])
    stopped = env.run("stop", "ported", "-y", timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_status(env, "ported", ("terminated",), timeout=180)["status"] == "terminated"
    assert cluster.gone("ported")  # ended means ended: nothing of it on either host
    rows = node_rows(env, "ported")
    assert all(" terminated" in row for row in rows.values()), rows


@pytest.mark.parametrize(("order", "first", "then"), [("master-first", 0, 1), ("workers-first", 1, 0)])
def test_the_nodes_start_in_startup_order(cluster: Cluster, order: str, first: int, then: int) -> None:
    # Every node lists the nodes that started before it (a folder both hosts see), then marks itself; it
    # prints only after marking, so a node counts as running here only once its mark is there.
    marks = STATE_ROOT / f"order-{order}-{os.getpid()}"
    marks.mkdir(mode=0o777, parents=True)
    try:
        project = cluster.project(order)
        task(
            project,
            [f'seen=$(ls {marks} | paste -sd,); touch {marks}/$DSTACK_NODE_RANK; echo "saw [$seen]"'],
            extra=NODES + f"startup_order: {order}\n",
        )
        run = cluster.env.run("run", ".", "-y", "-n", order, cwd=project, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        outputs = {rank: _output(cluster.env, order, rank).strip() for rank in (0, 1)}
        assert outputs[first] == "saw []", outputs  # nothing of the other node ran before it
        assert outputs[then] == f"saw [{first}]", outputs  # it started only once the first one ran
    finally:
        for mark in marks.iterdir():
            mark.unlink()
        marks.rmdir()


def test_a_lost_node_fails_the_run_and_the_others_are_stopped(cluster: Cluster) -> None:
    env, project = cluster.env, cluster.project("lost")
    task(project, ['echo "node $DSTACK_NODE_RANK up"', "sleep 600"], extra=NODES)
    result = env.run("run", ".", "-y", "-d", "-n", "lost", cwd=project, timeout=300)
    assert result.returncode == 0, result.stderr
    wait_status(env, "lost", ("running",), timeout=180)
    master, worker = cluster.host_of("lost", 0), cluster.host_of("lost", 1)
    wait_for(lambda: "node 1 up" in _output(env, "lost", 1), timeout=120, what="node 1 to run")
    worker.stop_sshd()  # the worker's host goes silent: the server cannot reach it any more
    try:
        ended = wait_status(env, "lost", ("failed",), timeout=GRACE + 150)
        assert f"node 1 ({worker.address}): host lost" in ended["line"], ended
        assert cluster.gone("lost", [master])  # the master was stopped before the run was reported failed
        rows = node_rows(env, "lost")
        assert " terminated" in rows[0] and "host lost" in rows[1], rows
        assert not cluster.gone("lost", [worker])  # the silent host never said its node ended
    finally:
        worker.start_sshd()
    # Back: what the lost node left there is stopped.
    wait_for(lambda: cluster.gone("lost", [worker]), timeout=180, what="the lost node's processes to stop")


def test_a_backend_without_multi_node_ability_says_so_in_one_sentence(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    task(project_dir, ["echo hi"], extra="nodes: 2\n")
    result = dstack_env.run("run", ".", "-y", cwd=project_dir, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No offer fits 2 nodes: backend local has one host (this machine)." in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"Nodes\s+2", result.stderr), result.stderr  # the plan still says how many
