"""Fleet benchmark (issue 9): the user's own hosts over SSH, each figure next to its peer in the same run.

    .venv/bin/python bench/fleets.py [--runs 10] [--gib 1] [--size-mb 256] [--applies 3]

Two test hosts (real sshd's in network namespaces, as tests/infra makes them: nothing but Debian's python3)
and the real CLI, embedded server and agents, in a throwaway HOME. Needs root.
  apply     `dstack apply -y` of a fresh two-host fleet (no agent, no pinned key), next to a plain `ssh`
            handshake + one command to both hosts at once (the floor: what connecting costs)
  run       warm `dstack run -y` of `echo hi` on a fleet host, next to `ssh host echo hi` over an already
            open control connection, and next to the same run on `local`
  output    1 GiB of numbered lines from a host to an attached CLI (every line once, in order), next to
            `ssh host seq` over an open control connection
  ports     bulk TCP and an HTTP file from a task on the host's loopback through `-p`, and the latency it
            adds per request, next to plain `ssh -L` to the same app on the same host
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ports import file_throughput, latencies, percentile, throughput  # noqa: E402
from bench.run_latency import _lines_for, timed  # noqa: E402
from tests.e2e.fleetkit import FLEET, write_fleet  # noqa: E402
from tests.e2e.harness import DSTACK, DstackEnv  # noqa: E402
from tests.e2e.portkit import Attached, free_port  # noqa: E402
from tests.infra.netns import create_network  # noqa: E402
from tests.infra.sshhosts import ClientKey, SSHHost, make_key, start_host  # noqa: E402

APP = ROOT / "bench" / "ports_app.py"


def ssh_argv(host: SSHHost, key: ClientKey, known: Path, *extra: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(key.path), "-o", f"UserKnownHostsFile={known}",
        "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "Ciphers=aes128-gcm@openssh.com", *extra, f"root@{host.address}",
    ]  # fmt: skip


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scratch = Path(tempfile.mkdtemp(prefix="dstack-bench-fleets-"))
        self.network = create_network()
        self.hosts = [start_host(self.network, i) for i in (1, 2)]
        self.key = make_key(self.scratch / "key" / "id_ed25519")
        for host in self.hosts:
            host.authorize("root", self.key)
        self.known = self.scratch / "known_hosts"
        self.env = DstackEnv(self.scratch / "home")
        self.project = self.env.home / "project"
        self.project.mkdir()
        self.fleet = write_fleet(self.env.home, self.hosts, self.key)
        self.master = self.scratch / "master"

    def close(self) -> None:
        done = ssh_argv(self.hosts[0], self.key, self.known, "-S", str(self.master), "-O", "exit")
        subprocess.run(done, capture_output=True)
        self.env.cleanup()
        for host in self.hosts:
            host.close()
        self.network.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # -- apply -------------------------------------------------------------------------------------------

    def apply(self) -> tuple[list[float], list[float]]:
        self.env.run("fleet", check=True)  # starts the embedded server: not part of an apply
        applies, floors = [], []
        for _ in range(self.args.applies):
            for host in self.hosts:
                host.kill_processes()  # a fresh host: no agent, nothing shipped
            self.env.run("fleet", "delete", FLEET, "-y", timeout=300)  # also unpins the host keys
            start = time.perf_counter()
            self.env.run("apply", "-f", str(self.fleet), "-y", cwd=self.env.home, check=True, timeout=300)
            applies.append(time.perf_counter() - start)
            self.known.unlink(missing_ok=True)
            start = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(self._ssh_true, self.hosts))
            floors.append(time.perf_counter() - start)
        return applies, floors

    def _ssh_true(self, host: SSHHost) -> None:
        subprocess.run([*ssh_argv(host, self.key, self.known), "true"], check=True)

    # -- run ---------------------------------------------------------------------------------------------

    def runs(self) -> dict[str, list[float]]:
        (self.project / ".dstack.yml").write_text("type: task\ncommands:\n  - echo hi\n")
        fleet = [DSTACK, "run", ".", "-y", "--fleet", FLEET, "--cpu", "1.."]
        local = [DSTACK, "run", ".", "-y", "-b", "local", "--cpu", "1.."]
        for command in (fleet, local):  # warm: environments made, caches filled
            for _ in range(2):
                subprocess.run(command, env=self.env.env, cwd=self.project, check=True, capture_output=True)
        master = ssh_argv(self.hosts[0], self.key, self.known, "-M", "-N", "-f", "-S", str(self.master))
        subprocess.run(master, check=True)
        ssh = [*ssh_argv(self.hosts[0], self.key, self.known, "-S", str(self.master)), "echo", "hi"]
        return {
            "fleet": timed(fleet, self.env.env, self.project, self.args.runs),
            "ssh": timed(ssh, self.env.env, self.project, self.args.runs),
            "local": timed(local, self.env.env, self.project, self.args.runs),
        }

    # -- output ------------------------------------------------------------------------------------------

    def output(self) -> tuple[float, bool, float]:
        """(MB/s through dstack, every line once and in order, MB/s of ssh seq over the control master)."""
        count = _lines_for(int(self.args.gib * 1024**3))
        (self.project / ".dstack.yml").write_text(f"type: task\ncommands:\n  - seq 1 {count}\n")
        expected = hashlib.sha256()
        size_expected = 0
        seq = subprocess.Popen(["seq", "1", str(count)], stdout=subprocess.PIPE)
        assert seq.stdout is not None
        while chunk := seq.stdout.read(1 << 20):
            expected.update(chunk)
            size_expected += len(chunk)
        seq.wait()
        over_master = ssh_argv(self.hosts[0], self.key, self.known, "-S", str(self.master))
        ssh_rate = self._read_rate([*over_master, "seq", "1", str(count)], None)[0]
        rate, digest, size = self._read_rate(
            [DSTACK, "run", ".", "-y", "--fleet", FLEET, "--cpu", "1.."], self.env
        )
        return rate, digest == expected.digest() and size == size_expected, ssh_rate

    def _read_rate(self, argv: list[str], env: DstackEnv | None) -> tuple[float, bytes, int]:
        start = time.perf_counter()
        process = subprocess.Popen(
            argv,
            env=env.env if env else None,
            cwd=self.project,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        digest = hashlib.sha256()
        size = 0
        while chunk := process.stdout.read1(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        process.wait()
        return size / 1e6 / (time.perf_counter() - start), digest.digest(), size

    # -- ports -------------------------------------------------------------------------------------------

    def ports(self) -> dict[str, dict[str, float]]:
        shutil.copy(APP, self.project / "ports_app.py")
        task = {"source": 18611, "http": 18612}
        (self.project / ".dstack.yml").write_text(
            "type: task\nports:\n"
            + "".join(f"  - '*:{port}'\n" for port in task.values())
            + f"commands:\n  - python3 ports_app.py --source {task['source']} --http {task['http']}\n"
        )
        run = Attached(
            self.env,
            "run",
            ".",
            "-y",
            "--fleet",
            FLEET,
            "--cpu",
            "1..",
            "-n",
            "bench-ports",
            cwd=self.project,
        )
        tunnel = None
        try:
            via_dstack = {name: int(run.url_for(port).rsplit(":", 1)[1]) for name, port in task.items()}
            via_ssh = {name: free_port() for name in task}
            forwards = [
                arg
                for name, port in task.items()
                for arg in ("-L", f"127.0.0.1:{via_ssh[name]}:127.0.0.1:{port}")
            ]
            options = ("-N", "-o", "ExitOnForwardFailure=yes", *forwards)
            tunnel = subprocess.Popen(ssh_argv(self._host_of_run(), self.key, self.known, *options))
            _wait_port(via_ssh["http"])
            size = self.args.size_mb * 1024 * 1024
            rows: dict[str, dict[str, float]] = {}
            for path, local in (("ssh -L", via_ssh), ("dstack -p", via_dstack)):
                tcp = statistics.median(throughput(local["source"], size) for _ in range(3))
                file = statistics.median(file_throughput(local["http"]) for _ in range(3))
                lat = latencies(local["http"], self.args.requests)
                rows[path] = {
                    "tcp": tcp,
                    "file": file,
                    "p50": percentile(lat, 0.5),
                    "p99": percentile(lat, 0.99),
                }
            return rows
        finally:
            if tunnel is not None:
                tunnel.kill()
            run.stop()
            self.env.run("stop", "-x", "-y", "bench-ports", timeout=60)

    def _host_of_run(self) -> SSHHost:
        """The host `dstack fleet` says runs the benchmark's task."""
        for line in self.env.run("fleet").stdout.splitlines():
            if "bench-ports" in line:
                return next(host for host in self.hosts if host.address in line)
        raise SystemExit("the benchmark's task runs on no host")


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--applies", type=int, default=3)
    args = parser.parse_args()
    bench = Bench(args)
    try:
        applies, floors = bench.apply()
        runs = bench.runs()
        rate, complete, ssh_rate = bench.output()
        ports = bench.ports()
    finally:
        bench.close()
    ms = lambda samples: f"{statistics.median(samples) * 1000:.0f} ms"  # noqa: E731
    print("\nFleet benchmark (medians; the machine may be shared: see the peers)")
    print(
        f"  dstack apply, fresh 2-host fleet : {statistics.median(applies):.2f} s   "
        f"(ssh handshake + command to both: {statistics.median(floors):.2f} s; goal <= 3 s)"
    )
    print(
        f"  warm dstack run echo hi, fleet   : {ms(runs['fleet'])}   (ssh over an open master: "
        f"{ms(runs['ssh'])}; same run on local: {ms(runs['local'])}; goal <= ssh + 150 ms)"
    )
    print(
        f"  {args.gib:g} GiB of lines to the CLI      : {rate:.0f} MB/s, every line once and in order: "
        f"{'yes' if complete else 'NO'}   (ssh seq over the master: {ssh_rate:.0f} MB/s; goal >= 150 MB/s)"
    )
    print("  ports (task on the host's loopback):")
    print("    path        TCP MB/s  file MB/s  p50 ms  p99 ms")
    for path, row in ports.items():
        latency = f"{row['p50'] * 1e3:7.3f} {row['p99'] * 1e3:7.3f}"
        print(f"    {path:<10} {row['tcp']:9.0f} {row['file']:10.0f} {latency}")
    base, ours = ports["ssh -L"], ports["dstack -p"]
    print(
        f"    dstack -p / ssh -L: TCP {ours['tcp'] / base['tcp'] * 100:.0f}%, file "
        f"{ours['file'] / base['file'] * 100:.0f}%; added p50 {(ours['p50'] - base['p50']) * 1e3:+.3f} ms "
        "(goal >= 100%)"
    )


if __name__ == "__main__":
    main()
