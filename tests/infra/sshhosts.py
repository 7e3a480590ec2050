"""Test hosts that look like fresh servers: a real OpenSSH sshd per host, each in its own network, mount and
UTS namespace.

A host sees its own hostname, its own empty /tmp, /root and /home (tmpfs), its own /etc/passwd (with the
extra users a test asks for) and Debian's /usr/bin/python3 — no pyenv, no uv, no dstack. So code and the
agent must really travel over SSH: nothing the server writes on its own disk is visible on a host.

Each host has a "keeper" process that holds its namespaces, so sshd can be killed and started again (a
host whose sshd died, then came back) while the agent and tasks on it keep running, and `cut()` takes its
link down (a network failure). `close()` kills every process in the host's mount namespace.

Hosts can be made to differ as real ones do: `cpus` pins sshd (and so everything started over SSH) to
some CPUs, `home_size` makes /root and /home small tmpfs (a full disk), `python=False` hides the host's
python3, `gpus` puts a fake `nvidia-smi` on its PATH, and `start_dockerd()` runs a private Docker daemon
inside the host's namespaces (its containers use the host's network), which sshd's sessions see through
DOCKER_HOST. A machine-wide Docker socket, if any, is hidden from every host.

The sshd's own files (config, host key, authorized keys, log) live outside the host's private folders,
under /var/tmp/dstack-tests/<suffix>/<host>, since sshd reads authorized_keys on every connection.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.infra.netns import Namespace, TestNetwork, sh

SSHD = "/usr/sbin/sshd"
STATE_ROOT = Path("/var/tmp/dstack-tests")
_FIRST_UID = 2001


@dataclass
class ClientKey:
    """A key pair the "user" connects with."""

    path: Path

    @property
    def public(self) -> str:
        return Path(f"{self.path}.pub").read_text().strip()


def make_key(path: Path) -> ClientKey:
    path.parent.mkdir(parents=True, exist_ok=True)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dstack-test", "-f", str(path))
    return ClientKey(path)


@dataclass
class SSHHost:
    hostname: str
    ns: Namespace
    dir: Path
    users: dict[str, int] = field(default_factory=dict)  # name -> uid (root is 0)
    sshd_config: dict[str, str] = field(default_factory=dict)  # extra sshd_config lines
    keeper: subprocess.Popen[str] | None = None
    sshd: subprocess.Popen[bytes] | None = None
    port: int = 22
    cpus: str | None = None  # a CPU list for taskset, e.g. "0"
    dockerd: Any = None  # tests.dockerd.Dockerd, once start_dockerd() ran

    @property
    def address(self) -> str:
        return self.ns.address

    # -- keys --------------------------------------------------------------------------------------------

    def authorize(self, user: str, key: ClientKey) -> None:
        keys = self.dir / "authorized_keys" / user
        keys.parent.mkdir(parents=True, exist_ok=True)
        with keys.open("a") as f:
            f.write(key.public + "\n")

    def revoke_all(self, user: str) -> None:
        (self.dir / "authorized_keys" / user).write_text("")

    def new_host_key(self) -> None:
        """A reinstalled host: a new host key (restart sshd to serve it)."""
        key = self.dir / "host_ed25519"
        key.unlink(missing_ok=True)
        Path(f"{key}.pub").unlink(missing_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))

    def host_key_line(self) -> str:
        """Its public host key as a known_hosts line."""
        kind, blob = Path(f"{self.dir / 'host_ed25519'}.pub").read_text().split()[:2]
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {kind} {blob}"

    # -- sshd --------------------------------------------------------------------------------------------

    def write_sshd_config(self) -> None:
        lines = {
            "Port": str(self.port),
            "ListenAddress": self.address,
            "HostKey": str(self.dir / "host_ed25519"),
            "PidFile": str(self.dir / "sshd.pid"),
            "AuthorizedKeysFile": str(self.dir / "authorized_keys" / "%u"),
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "prohibit-password",
            "UsePAM": "no",
            "StrictModes": "no",
            "AllowTcpForwarding": "yes",
            "MaxSessions": "100",
            "MaxStartups": "100:30:200",
            "Subsystem": "sftp internal-sftp",
            **self.sshd_config,
        }
        (self.dir / "sshd_config").write_text("".join(f"{k} {v}\n" for k, v in lines.items()))

    def start_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            return
        assert self.keeper is not None
        self.write_sshd_config()
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        pin = ["taskset", "-c", self.cpus] if self.cpus else []
        with (self.dir / "sshd.log").open("ab") as log:
            self.sshd = subprocess.Popen(
                [*self.enter_argv(), *pin, SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(f"sshd of {self.hostname} exited: {(self.dir / 'sshd.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), 0.5):
                return
            time.sleep(0.02)
        raise RuntimeError(f"sshd of {self.hostname} did not listen within 20 s")

    def stop_sshd(self) -> None:
        """Kill the listening sshd and every session it serves (the agent and tasks keep running)."""
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.kill()
            self.sshd.wait(10)
        for pid in self.pids():
            if _command(pid).startswith(("sshd:", SSHD)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # -- inside the host ---------------------------------------------------------------------------------

    def enter_argv(self) -> list[str]:
        assert self.keeper is not None
        return ["nsenter", f"--target={self.keeper.pid}", "--net", "--mount", "--uts"]

    def exec(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command on the host, as root, outside of SSH (for the test's own checks)."""
        return subprocess.run(
            [*self.enter_argv(), *argv], capture_output=True, text=True, timeout=timeout, env=_clean_env()
        )

    def pids(self) -> list[int]:
        """Every process in this host's mount namespace (sshd, the agent, tasks)."""
        assert self.keeper is not None
        try:
            mine = os.readlink(f"/proc/{self.keeper.pid}/ns/mnt")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.keeper.pid:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") == mine:
                        found.append(int(entry))
        return found

    def processes_with_env(self, marker: str) -> list[int]:
        """PIDs on this host whose environment holds `marker` (e.g. a job's id)."""
        hits = []
        needle = marker.encode()
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{pid}/environ").read_bytes():
                    hits.append(pid)
        return hits

    def kill_processes(self) -> None:
        """Kill what runs on the host (agents, tasks; not sshd or dockerd), and remove ~/.dstack."""

        def others() -> list[int]:
            return [
                pid
                for pid in self.pids()
                if not _command(pid).startswith(("sshd:", SSHD))
                and not (self.dockerd is not None and pid == self.dockerd.process.pid)
                and "containerd" not in _command(pid)
            ]

        _kill(others)
        self.exec("sh", "-c", "rm -rf /root/.dstack /home/*/.dstack")

    def agent_pids(self) -> list[int]:
        return [pid for pid in self.pids() if "dstack-agent-" in _command(pid)]

    def start_dockerd(self) -> Any:
        """A private Docker daemon in this host's network and mount namespaces, with the busybox image."""
        from tests.dockerd import import_busybox, start_dockerd

        if self.dockerd is None:
            self.dockerd = start_dockerd(root=self.dir / "d", wrap=self.enter_argv())
            import_busybox(self.dockerd)
            self.sshd_config["SetEnv"] = f"DOCKER_HOST={self.dockerd.host}"
            self.stop_sshd()
            self.start_sshd()
        return self.dockerd

    def close(self) -> None:
        if self.dockerd is not None:
            from tests.dockerd import stop_dockerd

            with contextlib.suppress(Exception):
                stop_dockerd(self.dockerd)
        _kill(self.pids)
        for process in (self.sshd, self.keeper):
            if process is not None and process.poll() is None:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)


def _kill(find: Callable[[], list[int]]) -> None:
    for _ in range(3):
        pids = find()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _clean_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _private_etc(host: SSHHost) -> Path:
    """/etc/passwd, group and shadow for the host: the machine's, plus the host's own users."""
    etc = host.dir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    shadow = Path("/etc/shadow").read_text()
    for name, uid in host.users.items():
        if uid == 0:
            continue
        passwd += f"{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n"
        group += f"{name}:x:{uid}:\n"
        shadow += f"{name}:*:19000:0:99999:7:::\n"  # '*': no password, keys only (UsePAM no accepts it)
    for name, text in (("passwd", passwd), ("group", group), ("shadow", shadow)):
        (etc / name).write_text(text)
    (etc / "shadow").chmod(0o600)
    return etc


_FAKE_NVIDIA_SMI = """#!/bin/sh
# A fake nvidia-smi for tests: answers the agent's query with the GPUs this host pretends to have.
cat <<'CSV'
{rows}
CSV
"""


def start_host(
    network: TestNetwork,
    index: int,
    *,
    users: tuple[str, ...] = (),
    port: int = 22,
    cpus: str | None = None,
    home_size: str | None = None,
    python: bool = True,
    gpus: tuple[tuple[str, int], ...] = (),
) -> SSHHost:
    """`gpus`: (name, memory MiB) of each fake GPU, e.g. (("NVIDIA A100-SXM4-80GB", 81920),)."""
    ns = network.add_namespace()
    hostname = f"host{index}-{network.suffix}"
    directory = STATE_ROOT / network.suffix / hostname
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    host = SSHHost(hostname=hostname, ns=ns, dir=directory, port=port, cpus=cpus)
    host.users = {"root": 0, **{name: _FIRST_UID + i for i, name in enumerate(users)}}
    etc = _private_etc(host)
    homes = " && ".join(
        f"mkdir -p /home/{name} && chown {uid}:{uid} /home/{name} && chmod 755 /home/{name}"
        for name, uid in host.users.items()
        if uid
    )
    size = f",size={home_size}" if home_size else ""
    sbin = directory / "sbin"  # on PATH first for root over SSH: the fake nvidia-smi goes there
    sbin.mkdir()
    if gpus:
        rows = "\n".join(f"{i}, {name}, {mib}, GPU-{i:08d}-fake" for i, (name, mib) in enumerate(gpus))
        tool = sbin / "nvidia-smi"
        tool.write_text(_FAKE_NVIDIA_SMI.format(rows=rows))
        tool.chmod(0o755)
    hidden = (
        [] if python else [f"mount --bind /dev/null {p}" for p in ("/usr/bin/python3", "/usr/bin/python3.11")]
    )
    setup = " && ".join(
        part
        for part in (
            f"hostname {hostname}",
            "mount -t tmpfs -o mode=1777 tmpfs /tmp",
            f"mount -t tmpfs -o mode=700{size} tmpfs /root",
            f"mount -t tmpfs -o mode=755{size} tmpfs /home",
            *(f"mount --bind {etc / name} /etc/{name}" for name in ("passwd", "group", "shadow")),
            f"mount --bind {sbin} /usr/local/sbin",
            # A Docker daemon of the machine is not the host's: its containers would not share its network.
            "{ [ ! -S /run/docker.sock ] || mount --bind /dev/null /run/docker.sock; }",
            *hidden,
            homes,
            "echo ready",
            "exec sleep infinity",
        )
        if part
    )
    host.keeper = subprocess.Popen(
        [
            "nsenter",
            f"--net={ns.path}",
            "unshare",
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            setup,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_clean_env(),
    )
    assert host.keeper.stdout is not None
    line = host.keeper.stdout.readline()
    if line.strip() != "ready":
        host.keeper.kill()
        raise RuntimeError(
            f"host {hostname} did not start: {host.keeper.stderr.read() if host.keeper.stderr else ''}"
        )
    host.new_host_key()
    host.start_sshd()
    return host
