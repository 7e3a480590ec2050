"""The peers the benchmarks measure against, started on this machine for one run and stopped after it:
a one-node Slurm cluster (munged, slurmctld, slurmd) and a plain sshd on a loopback port.

Everything lives in a scratch folder of its own, with ports picked free, so two benchmark runs (or the
tests of other work on the machine) never meet; only the processes started here are stopped. Loopback
only. The Slurm recipe is the one in the project's test-infrastructure notes (a tuned scheduler, so a
batch job is not held back by Slurm's default batch delay).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOAD_AT_IMPORT = os.getloadavg()[0]  # before the benchmark that imported this started its work


def machine_line() -> str:
    """What the figures were measured on, and whether other work was running when they were."""
    return (
        f"machine: {os.cpu_count()} CPUs; 1-minute load average {LOAD_AT_IMPORT:.2f} when this started, "
        f"{os.getloadavg()[0]:.2f} now (this benchmark's own work included)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Slurm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, check=check, timeout=120
        )


@contextmanager
def slurm_cluster() -> Iterator[Slurm]:
    """A one-node Slurm cluster with 2 CPUs' worth of slots; yields a handle with SLURM_CONF set."""
    root = Path(tempfile.mkdtemp(prefix="dstack-bench-slurm-"))
    root.chmod(0o711)  # munged refuses a socket in a folder others cannot traverse
    for folder in ("munge", "state/ctld", "state/d", "run", "log"):
        (root / folder).mkdir(parents=True)
    (root / "munge").chmod(0o711)
    host = socket.gethostname().split(".")[0]
    ctld_port, node_port = free_port(), free_port()
    cpus = os.cpu_count() or 2
    (root / "slurm.conf").write_text(
        "\n".join(
            [
                "ClusterName=dstackbench",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                f"AuthInfo=socket={root}/munge/munge.sock",
                "CredType=cred/munge",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={node_port}",
                f"StateSaveLocation={root}/state/ctld",
                f"SlurmdSpoolDir={root}/state/d",
                f"SlurmctldPidFile={root}/run/slurmctld.pid",
                f"SlurmdPidFile={root}/run/slurmd.pid",
                f"SlurmctldLogFile={root}/log/slurmctld.log",
                f"SlurmdLogFile={root}/log/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "MpiDefault=none",
                "MailProg=/bin/true",
                "ReturnToService=2",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "JobCompType=jobcomp/filetxt",
                f"JobCompLoc={root}/log/jobcomp.txt",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "InactiveLimit=0",
                "KillWait=5",
                "MinJobAge=300",
                "MaxJobCount=20000",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:64",
                "",
            ]
        )
    )
    started: list[subprocess.Popen[bytes]] = []
    slurm = Slurm(root)
    try:
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={root}/munge/munge.key"], check=True, capture_output=True
        )
        munge = [
            "munged",
            "--foreground",
            f"--key-file={root}/munge/munge.key",
            f"--socket={root}/munge/munge.sock",
            f"--pid-file={root}/run/munged.pid",
            f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge/seed",
        ]
        started.append(subprocess.Popen(munge, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: (root / "munge" / "munge.sock").exists(), 10, "munged")
        started.append(
            subprocess.Popen(
                ["slurmctld", "-D", "-i"], env=slurm.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        _wait(lambda: "UP" in slurm.run("scontrol", "ping", check=False).stdout, 30, "slurmctld")
        started.append(
            subprocess.Popen(
                ["slurmd", "-D"], env=slurm.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        _wait(
            lambda: slurm.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle", 30, "slurmd"
        )
        yield slurm
    finally:
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
        for process in reversed(started):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        subprocess.run(["rm", "-rf", str(root)], check=False)


@contextmanager
def sshd_on_loopback() -> Iterator[list[str]]:
    """A key-only sshd on 127.0.0.1 (a free port) for this user; yields the ssh command to reach it."""
    root = Path(tempfile.mkdtemp(prefix="dstack-bench-sshd-"))
    port = free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key")], check=True
    )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    (root / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root}/host_key",
                f"PidFile {root}/sshd.pid",
                f"AuthorizedKeysFile {root}/authorized_keys",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "AllowTcpForwarding yes",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    command = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(root / "client_key"),
        "-p",
        str(port),
        "-o",
        f"UserKnownHostsFile={root}/known_hosts",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        f"{os.environ.get('USER', 'root')}@127.0.0.1",
    ]
    try:
        _wait(
            lambda: subprocess.run([*command, "true"], capture_output=True, timeout=10).returncode == 0,
            20,
            "sshd",
        )
        yield command
    finally:
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(10)
        subprocess.run(["rm", "-rf", str(root)], check=False)
