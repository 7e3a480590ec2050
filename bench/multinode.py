"""Issue 11 figures: a two-node task, from `dstack run -y` to both nodes running and to its end, next to the
single-node figure and to the peer on the same hosts in the same run.

    .venv/bin/python bench/multinode.py [--runs 5] [--only fleet|slurm]

- fleet: two test hosts (real sshd's in network namespaces, tests/infra) in a fleet with
  `placement: cluster`, warm (agents installed, environments made). Peer: the same commands started on
  both hosts at once by `ssh` over already open control connections (the floor of starting a process
  there).
- slurm: the real test cluster (tests/infra/slurm.py), reached through its login node. Peer: `srun -N 2`
  (and `srun -N 1`) of the same commands, run on the login node.

"Running" is when every node's commands began: each node's first command writes the time (the hosts share
this machine's clock) into a folder every host sees; "end" is when the command returned. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleets import ssh_argv
from bench.peers import machine_line
from tests.e2e.fleetkit import write_fleet
from tests.e2e.harness import DstackEnv
from tests.e2e.test_slurm import write_server_config
from tests.infra.netns import create_network
from tests.infra.slurm import SlurmCluster, slurm_cluster
from tests.infra.sshhosts import STATE_ROOT, make_key, start_host

Sample = tuple[float, float]  # (seconds to every node running, seconds to the end)


class Marks:
    """The folder each node writes its start time into (named by its rank)."""

    def __init__(self) -> None:
        self.dir = STATE_ROOT / f"bench-multinode-{os.getpid()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o777)  # the Slurm nodes' user writes here too

    def command(self, rank: str = "$DSTACK_NODE_RANK") -> str:
        return f"date +%s.%N > {self.dir}/{rank}"

    def measure(self, action: Callable[[], None], nodes: int) -> Sample:
        for mark in self.dir.iterdir():
            mark.unlink()  # (a file another user wrote could not be written again)
        start = time.time()
        action()
        end = time.time()
        started = [float((self.dir / str(rank)).read_text()) for rank in range(nodes)]
        return max(started) - start, end - start

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def checked(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0 or "hi" not in result.stdout:
        raise SystemExit(
            f"{result.args} failed ({result.returncode}): {result.stdout[-500:]} {result.stderr}"
        )


def task_file(project: Path, name: str, marks: Marks, nodes: int, resources: str) -> str:
    lines = [
        "type: task",
        f"nodes: {nodes}",
        resources,
        "commands:",
        f"  - {marks.command()!r}",
        "  - echo hi",
    ]
    (project / name).write_text("\n".join(lines) + "\n")
    return name


def samples(action: Callable[[], None], marks: Marks, nodes: int, runs: int) -> list[Sample]:
    return [marks.measure(action, nodes) for _ in range(runs)]


def fleet_rows(marks: Marks, runs: int) -> list[list[str]]:
    scratch = Path(tempfile.mkdtemp(prefix="dstack-bench-multinode-"))
    network = create_network()
    hosts = []
    env = DstackEnv(scratch / "home")
    masters = []
    try:
        hosts = [start_host(network, i) for i in (1, 2)]
        key = make_key(scratch / "key" / "id_ed25519")
        for host in hosts:
            host.authorize("root", key)
        fleet = write_fleet(env.home, hosts, key, placement="cluster")
        env.run("apply", "-f", str(fleet), "-y", cwd=env.home, check=True, timeout=300)
        project = env.home / "project"
        project.mkdir()
        resources = "resources:\n  cpu: 1.."
        one, two = (task_file(project, f"n{n}.dstack.yml", marks, n, resources) for n in (1, 2))

        def dstack(name: str) -> Callable[[], None]:
            return lambda: checked(env.run("run", ".", "-f", name, "-y", cwd=project, timeout=300))

        for name in (one, two, one, two):  # warm: agents answering, environments made
            marks.measure(dstack(name), 1)
        known = scratch / "known_hosts"
        sockets = [scratch / f"master-{i}" for i in range(len(hosts))]
        for host, sock in zip(hosts, sockets, strict=True):
            subprocess.run(ssh_argv(host, key, known, "-M", "-N", "-f", "-S", str(sock)), check=True)
            masters.append(ssh_argv(host, key, known, "-S", str(sock)))

        def ssh(count: int) -> Callable[[], None]:
            def start_all() -> None:
                commands = [f"{marks.command(str(rank))}; echo hi" for rank in range(count)]
                with ThreadPoolExecutor(count) as pool:
                    list(pool.map(_ssh_one, masters[:count], commands))

            return start_all

        return [
            _row("fleet, 2 nodes: dstack run -y", samples(dstack(two), marks, 2, runs)),
            _row("fleet, 2 nodes: ssh to both at once", samples(ssh(2), marks, 2, runs)),
            _row("fleet, 1 node: dstack run -y", samples(dstack(one), marks, 1, runs)),
            _row("fleet, 1 node: ssh", samples(ssh(1), marks, 1, runs)),
        ]
    finally:
        for argv in masters:
            subprocess.run([*argv[:-1], "-O", "exit", argv[-1]], capture_output=True)
        env.cleanup()
        for host in hosts:
            host.close()
        network.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _ssh_one(master: list[str], command: str) -> None:
    checked(subprocess.run([*master, command], capture_output=True, text=True, timeout=120))


def slurm_rows(marks: Marks, runs: int) -> list[list[str]]:
    scratch = Path(tempfile.mkdtemp(prefix="dstack-bench-multinode-slurm-"))
    env = DstackEnv(scratch / "home")
    try:
        with slurm_cluster() as cluster:
            write_server_config(env, cluster.backend_config())
            project = env.home / "project"
            project.mkdir()
            resources = "resources:\n  cpu: 1\n  memory: 1GB"
            one, two = (task_file(project, f"n{n}.dstack.yml", marks, n, resources) for n in (1, 2))

            def dstack(name: str) -> Callable[[], None]:
                argv = ("run", ".", "-f", name, "-b", "slurm", "-y")
                return lambda: checked(env.run(*argv, cwd=project, timeout=300))

            for name in (one, two, one, two):  # warm: the SSH master open, the nodes' environments made
                marks.measure(dstack(name), 1)
            return [
                _row("Slurm, 2 nodes: dstack run -y", samples(dstack(two), marks, 2, runs)),
                _row("Slurm, 2 nodes: srun -N 2", samples(_srun(cluster, marks, 2), marks, 2, runs)),
                _row("Slurm, 1 node: dstack run -y", samples(dstack(one), marks, 1, runs)),
                _row("Slurm, 1 node: srun -N 1", samples(_srun(cluster, marks, 1), marks, 1, runs)),
            ]
    finally:
        env.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


def _srun(cluster: SlurmCluster, marks: Marks, nodes: int) -> Callable[[], None]:
    script = f"{marks.command('$SLURM_NODEID')}; echo hi"
    partition = ["-p", "all"] if nodes > 1 else []
    argv = ["srun", "-N", str(nodes), *partition, "--chdir=/tmp", "bash", "-c", script]
    return lambda: checked(cluster.slurm(*argv, timeout=120))


def _row(name: str, taken: list[Sample]) -> list[str]:
    running, ended = [s[0] for s in taken], [s[1] for s in taken]
    return [name, _ms(running), _ms(ended), _ms([max(ended)])]


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("fleet", "slurm"))
    args = parser.parse_args()
    marks = Marks()
    table = [["measure (median of runs)", "to every node running", "to the end", "slowest end"]]
    try:
        if args.only in (None, "fleet"):
            table += fleet_rows(marks, args.runs)
        if args.only in (None, "slurm"):
            table += slurm_rows(marks, args.runs)
    finally:
        marks.close()
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
    print(f"{args.runs} runs each; {machine_line()}")


if __name__ == "__main__":
    main()
