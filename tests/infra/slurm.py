"""A real Slurm cluster for tests and benchmarks, built from Debian's packages on the test network.

Four hosts on one bridge, each a network + mount + UTS namespace of its own (see sshhosts.py):
- a login node: the only host with an sshd a client uses; `SetEnv SLURM_CONF=...` gives every session the
  cluster's config, as /etc/slurm would;
- a controller running munged and slurmctld (inside its namespace, so its ports are its own and nothing
  listens on the root namespace);
- compute nodes running slurmd: `cpu` partition = node 1, `gpu` partition = node 2, which has two fake
  GPUs (GRES on character devices, so Slurm sets CUDA_VISIBLE_DEVICES for the GPUs it allocates) and a
  time limit of an hour that Slurm enforces at submission (EnforcePartLimits=ALL); `all` = both nodes
  (multi-node jobs).

Every host has its own /tmp and /home and knows the cluster user `alice` (same uid everywhere, as Slurm
requires), so nothing passes between the login node and the compute nodes but what Slurm carries.
Every path, name and address carries the network's random suffix; every daemon is stopped by PID.

Scheduler tuning from test-infrastructure.md §2: batch jobs start within ~1 s, sbatch --wait polls at 2 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.infra.netns import TestNetwork, create_network
from tests.infra.sshhosts import STATE_ROOT, ClientKey, SSHHost, make_key, start_host

USER = "alice"
NODE_CPUS = 4
NODE_MEMORY_MB = 16000
GPUS = 2
_CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SlurmUnavailable(Exception):
    """This machine lacks Slurm or munge."""


@dataclass
class SlurmCluster:
    network: TestNetwork
    dir: Path
    name: str
    login: SSHHost
    controller: SSHHost
    nodes: list[SSHHost]
    key: ClientKey
    user: str = USER
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def cpu_node(self) -> SSHHost:
        return self.nodes[0]

    @property
    def gpu_node(self) -> SSHHost:
        return self.nodes[1]

    def slurm(
        self, *argv: str, user: str | None = None, timeout: float = 60, on: SSHHost | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command on the login node (as the cluster user by default, as a user would), or on
        the host `on` (the controller answers even while a test has cut the login node off)."""
        who = user or self.user
        host = on or self.login
        command = [*host.enter_argv(), "env", f"SLURM_CONF={self.conf}", f"PATH={_CLEAN_PATH}"]
        if who != "root":
            command += ["setpriv", f"--reuid={host.users[who]}", f"--regid={host.users[who]}",
                        "--clear-groups", "env", f"HOME=/home/{who}", f"USER={who}"]  # fmt: skip
        return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=timeout)

    def jobs(self) -> list[str]:
        """Ids of the jobs Slurm still has queued or running (squeue)."""
        result = self.slurm("squeue", "-h", "-o", "%i", user="root", on=self.controller)
        if result.returncode != 0:
            raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
        return result.stdout.split()

    def job_field(self, job_id: str, name: str) -> str | None:
        result = self.slurm("scontrol", "show", "job", "-o", job_id, user="root", on=self.controller)
        for word in result.stdout.split():
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
        return None

    def wait_until_idle(self, timeout: float = 60) -> None:
        """Every node idle and no job left (a test that fails mid-way must not block the next one)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.slurm(
                "sinfo", "-h", "-N", "-o", "%T", user="root", on=self.controller
            ).stdout.split()
            if states and all(s == "idle" for s in states) and not self.jobs():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Slurm cluster is not idle: nodes {states}, jobs {self.jobs()}")
            time.sleep(0.2)

    def cancel_all(self) -> None:
        self.slurm("scancel", "--full", "-u", self.user, user="root", on=self.controller)

    def backend_config(self, name: str = "hpc", **extra: object) -> dict[str, object]:
        """The `slurm` backend entry of a dstack server's config.yml for this cluster."""
        cluster: dict[str, object] = {
            "name": name,
            "hostname": self.login.address,
            "port": self.login.port,
            "user": self.user,
            "identity_file": str(self.key.path),
            "gpu_partitions": [{"gpu": "T4:16GB", "partitions": ["gpu"]}],
            **extra,
        }
        return {"type": "slurm", "clusters": [cluster]}

    def log(self, what: str) -> str:
        path = self.dir / "log" / f"{what}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for process in self.daemons:
            if process.poll() is None:
                process.terminate()
        for process in self.daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
        for host in (*self.nodes, self.controller, self.login):
            host.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_possible() -> None:
    for tool in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch"):
        if not Path(tool).exists():
            raise SlurmUnavailable(f"{tool} is missing (install slurm-wlm, slurmctld, slurmd, munge)")


def start_cluster(network: TestNetwork, key: ClientKey) -> SlurmCluster:
    _check_possible()
    first = len(network.namespaces) + 1
    login = start_host(network, first, users=(USER,))
    cluster_dir = STATE_ROOT / network.suffix / f"slurm{first}"
    cluster = SlurmCluster(
        network=network,
        dir=cluster_dir,
        name=f"ds{network.suffix}",
        login=login,
        controller=start_host(network, first + 1, users=(USER,)),
        nodes=[start_host(network, first + 2 + i, users=(USER,)) for i in range(2)],
        key=key,
    )
    try:
        for host in (cluster.controller, *cluster.nodes):
            host.stop_sshd()  # only the login node is reached over SSH
        login.authorize(USER, key)
        _write_files(cluster)
        _start_daemons(cluster)
        login.sshd_config["SetEnv"] = f"SLURM_CONF={cluster.conf}"
        login.stop_sshd()
        login.start_sshd()
        cluster.wait_until_idle()
    except BaseException:
        cluster.close()
        raise
    return cluster


def _write_files(cluster: SlurmCluster) -> None:
    d = cluster.dir
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("munge", "state", "run", "log", "dev"):
        (d / sub).mkdir(parents=True)
    os.chmod(d, 0o755)
    (d / "munge").chmod(0o711)  # munged insists: others may only traverse its socket folder
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for i in range(GPUS):
        device = d / "dev" / f"nvidia{i}"
        os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, as /dev/null
    ctl = cluster.controller
    cpu, gpu = cluster.nodes
    node_line = f"CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN"
    conf = f"""\
ClusterName={cluster.name}
SlurmctldHost={ctl.hostname}({ctl.address})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.sock
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={d}/state/ctld
SlurmdSpoolDir={d}/state/d-%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
InactiveLimit=0
EnforcePartLimits=ALL
KillWait=5
MinJobAge=60
NodeName={cpu.hostname} NodeHostname={cpu.hostname} NodeAddr={cpu.address} {node_line}
NodeName={gpu.hostname} NodeHostname={gpu.hostname} NodeAddr={gpu.address} Gres=gpu:{GPUS} {node_line}
PartitionName=cpu Nodes={cpu.hostname} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={gpu.hostname} MaxTime=60 State=UP
PartitionName=all Nodes={cpu.hostname},{gpu.hostname} MaxTime=INFINITE State=UP
"""
    cluster.conf.write_text(conf)
    (d / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={gpu.hostname} Name=gpu File={d}/dev/nvidia[0-{GPUS - 1}]\n"
    )
    (d / "state" / "ctld").mkdir()
    for node in cluster.nodes:
        (d / "state" / f"d-{node.hostname}").mkdir()


def _daemon(cluster: SlurmCluster, host: SSHHost, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    env = {"PATH": _CLEAN_PATH, "LANG": "C.UTF-8", "SLURM_CONF": str(cluster.conf)}
    with (cluster.dir / "log" / f"{name}.out").open("ab") as out:
        process = subprocess.Popen(
            [*host.enter_argv(), *argv], stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
        )
    cluster.daemons.append(process)
    return process


def _wait(what: str, check: object, timeout: float, process: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}): {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s: {log}")
        time.sleep(0.05)


def _start_daemons(cluster: SlurmCluster) -> None:
    d = cluster.dir
    munged = _daemon(
        cluster,
        cluster.controller,
        "munged",
        ["/usr/sbin/munged", "-F", f"--key-file={d}/munge.key", f"--socket={d}/munge/munge.sock",
         f"--pid-file={d}/run/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/seed"],
    )  # fmt: skip
    _wait("munged", lambda: (d / "munge" / "munge.sock").exists(), 20, munged, cluster.log("munged"))
    ctld = _daemon(cluster, cluster.controller, "slurmctld-out", ["/usr/sbin/slurmctld", "-D", "-i"])

    def controller_up() -> bool:
        return "UP" in cluster.slurm("scontrol", "ping", user="root", timeout=20).stdout

    _wait("slurmctld", controller_up, 30, ctld, cluster.log("slurmctld"))
    for node in cluster.nodes:
        slurmd = _daemon(
            cluster, node, f"slurmd-{node.hostname}-out", ["/usr/sbin/slurmd", "-D", "-N", node.hostname]
        )

        def registered(name: str = node.hostname) -> bool:
            states = cluster.slurm("sinfo", "-h", "-n", name, "-o", "%T", user="root").stdout.split()
            return states == ["idle"]

        _wait(f"slurmd on {node.hostname}", registered, 30, slurmd, cluster.log(f"slurmd-{node.hostname}"))


@contextlib.contextmanager
def slurm_cluster(network: TestNetwork | None = None, key: ClientKey | None = None) -> Iterator[SlurmCluster]:
    """A cluster for the length of the block (for bench/: makes its own network and key when not given)."""
    own_network = network is None
    net = network or create_network()
    scratch = None
    try:
        if key is None:
            scratch = STATE_ROOT / net.suffix / "client"
            key = make_key(scratch / "id_ed25519")
        cluster = start_cluster(net, key)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if own_network:
            net.close()
