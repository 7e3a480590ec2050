"""Port forwarding benchmark: throughput, added latency, and how soon the URL is announced.

Runs a real task (bench/ports_app.py) with the real CLI, server and agent in a scratch HOME. Transfers: a raw
TCP stream (the app sends from memory as fast as it can: the hardest case for a relay) and a 256 MB HTTP
file download (the app is a Python web server, as most task apps are). Three paths:
  loopback   the client connects straight to the task's port (the baseline)
  shortcut   same machine, mapping L:N with L != N: the CLI relays 127.0.0.1:L straight to 127.0.0.1:N
  server     the general path, forced with DSTACK_PORTS_VIA_SERVER=1: CLI -> server -> N (a WebSocket
             handshake, then the raw stream relayed in the kernel at each hop; with the local backend the
             server connects to N itself, a remote host's agent would be one hop more)
  ssh -L     the peer: `ssh -L` through an sshd on this machine's loopback (bench/peers.py)
  2 relays   the floor of the server path: two bare kernel relays in a row, 127.0.0.1:A -> B -> N, and
             nothing else (bench/ports_relay.py): every byte crosses three TCP connections, as through the
             server, on the same two cores
Goals (issue 15): server >= 70 % of loopback for the file, >= 50 % for raw TCP, <= +0.25 ms p50.
(On one machine a plain `- N` mapping needs no relay at all: it is the loopback row.)

    .venv/bin/python bench/ports.py [--size-mb 512] [--repeat 5] [--requests 2000]

Prints medians over the repeats. The numbers depend heavily on the machine: every byte crosses up to five
processes, which compete for the same cores here.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.e2e.harness import DstackEnv  # noqa: E402
from tests.e2e.portkit import Attached, free_port  # noqa: E402

APP = Path(__file__).with_name("ports_app.py")
RELAY = Path(__file__).with_name("ports_relay.py")


def throughput(port: int, size: int) -> float:
    """MB/s of one bulk download of `size` bytes from the source port."""
    buffer = bytearray(4 * 1024 * 1024)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(struct.pack(">Q", size))
        received = 0
        while received < size:
            count = sock.recv_into(view)
            if not count:
                raise RuntimeError(f"the stream ended after {received} of {size} bytes")
            received += count
        return size / (time.perf_counter() - started) / 1e6


def file_throughput(port: int) -> float:
    """MB/s of one HTTP download of the app's file (the everyday case: a Python web server's file)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", "/file")
        response = conn.getresponse()
        size = int(response.headers["Content-Length"])
        buffer = bytearray(4 * 1024 * 1024)
        received = 0
        while count := response.readinto(buffer):
            received += count
        if received != size:
            raise RuntimeError(f"the download ended after {received} of {size} bytes")
        return size / (time.perf_counter() - started) / 1e6
    finally:
        conn.close()


def latencies(port: int, requests: int) -> list[float]:
    """Seconds per GET /hello on one kept-alive connection (after a warm-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    result = []
    try:
        for i in range(requests + 200):
            started = time.perf_counter()
            conn.request("GET", "/hello")
            response = conn.getresponse()
            response.read()
            if i >= 200:
                result.append(time.perf_counter() - started)
    finally:
        conn.close()
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scratch = Path(tempfile.mkdtemp(prefix="dstack-bench-ports-"))
        self.env = DstackEnv(self.scratch / "home")
        self.project = self.env.home / "project"
        self.project.mkdir()
        shutil.copy(APP, self.project / "ports_app.py")
        self.ssh: list[str] | None = None  # the command that reaches the peer's sshd

    def close(self) -> None:
        self.env.cleanup()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def start(self, via_server: bool, delay: float = 0.0) -> tuple[Attached, dict[str, int], dict[str, int]]:
        """A run of the app; returns it, the task ports and the local ports the CLI printed."""
        task = {"source": free_port(), "http": free_port()}
        if via_server:
            self.env.env["DSTACK_PORTS_VIA_SERVER"] = "1"
            mappings = [f"*:{task['source']}", f"*:{task['http']}"]
        else:
            self.env.env.pop("DSTACK_PORTS_VIA_SERVER", None)
            mappings = [f"{free_port()}:{task['source']}", f"{free_port()}:{task['http']}"]
        config = ["type: task", "ports:", *[f"  - '{m}'" for m in mappings], "commands:"]
        config.append(
            f"  - python ports_app.py --source {task['source']} --http {task['http']} --delay {delay}"
        )
        (self.project / ".dstack.yml").write_text("\n".join(config) + "\n")
        run = Attached(self.env, "run", ".", "-y", cwd=self.project)
        local = {name: _port_of(run.url_for(port)) for name, port in task.items()}
        return run, task, local

    def finish(self, run: Attached, http_port: int) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
            conn.request("GET", "/quit")
            conn.getresponse().read()
            conn.close()
            run.wait(timeout=60)
        finally:
            run.stop()

    def measure_paths(self) -> dict[str, dict[str, float]]:
        """Per path: medians of TCP and file MB/s, their share of loopback, and request latencies."""
        size = self.args.size_mb * 1024 * 1024
        rows: dict[str, dict[str, float]] = {}
        loopback: dict[str, list[float]] = {"tcp": [], "file": [], "p50": [], "p99": []}
        paths = [("shortcut", False), ("server", True), ("2 relays", False)]
        paths += [("ssh -L", False)] if self.args.ssh else []
        for path, via_server in paths:
            run, task, local = self.start(via_server)
            forward: list[subprocess.Popen[bytes]] | None = None
            try:
                if path == "ssh -L":
                    forward, local = self.ssh_forward(task)
                elif path == "2 relays":
                    forward, local = self.bare_relays(task)
                tcp = [
                    (throughput(task["source"], size), throughput(local["source"], size)) for _ in self._reps
                ]
                file = [(file_throughput(task["http"]), file_throughput(local["http"])) for _ in self._reps]
                base_lat, fwd_lat = [], []
                for _ in range(3):
                    base_lat += latencies(task["http"], self.args.requests)
                    fwd_lat += latencies(local["http"], self.args.requests)
            finally:
                for process in forward or []:
                    process.terminate()
                    process.wait(10)
                self.finish(run, task["http"] if forward is not None else local["http"])
            loopback["tcp"].append(statistics.median(b for b, _ in tcp))
            loopback["file"].append(statistics.median(b for b, _ in file))
            loopback["p50"].append(percentile(base_lat, 0.5))
            loopback["p99"].append(percentile(base_lat, 0.99))
            rows[path] = {
                "tcp": statistics.median(f for _, f in tcp),
                "tcp_share": statistics.median(f / b for b, f in tcp),
                "file": statistics.median(f for _, f in file),
                "file_share": statistics.median(f / b for b, f in file),
                "p50": percentile(fwd_lat, 0.5),
                "p99": percentile(fwd_lat, 0.99),
                "added_p50": percentile(fwd_lat, 0.5) - percentile(base_lat, 0.5),
                "added_p99": percentile(fwd_lat, 0.99) - percentile(base_lat, 0.99),
            }
        rows["loopback"] = {
            "tcp": statistics.median(loopback["tcp"]),
            "tcp_share": 1.0,
            "file": statistics.median(loopback["file"]),
            "file_share": 1.0,
            "p50": statistics.median(loopback["p50"]),
            "p99": statistics.median(loopback["p99"]),
            "added_p50": 0.0,
            "added_p99": 0.0,
        }
        return rows

    def bare_relays(self, task: dict[str, int]) -> tuple[list[subprocess.Popen[bytes]], dict[str, int]]:
        """The floor: for each task port N, relay A -> relay B -> N, each a bare kernel relay."""
        local = {name: free_port() for name in task}
        started: list[subprocess.Popen[bytes]] = []
        for name, port in task.items():
            middle = free_port()
            for listen, target in ((middle, port), (local[name], middle)):
                process = subprocess.Popen(
                    [sys.executable, str(RELAY), str(listen), str(target)],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                )
                started.append(process)
                assert process.stdout is not None
                if process.stdout.readline().strip() != b"ready":
                    raise RuntimeError("a bare relay did not start")
        return started, local

    def ssh_forward(self, task: dict[str, int]) -> tuple[list[subprocess.Popen[bytes]], dict[str, int]]:
        """The peer: `ssh -L` to the task's ports through an sshd on this machine's loopback."""
        assert self.ssh is not None
        local = {name: free_port() for name in task}
        forwards = [arg for name in task for arg in ("-L", f"127.0.0.1:{local[name]}:127.0.0.1:{task[name]}")]
        process = subprocess.Popen(
            [*self.ssh, "-N", "-o", "ExitOnForwardFailure=yes", *forwards],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", local["http"]), timeout=1).close()
                return [process], local
            except OSError:
                time.sleep(0.05)
        process.kill()
        raise RuntimeError("the ssh -L forward did not come up")

    @property
    def _reps(self) -> range:
        return range(self.args.repeat)

    def time_to_url(self, via_server: bool) -> list[float]:
        """Seconds from the app's ports listening to the CLI printing the URL."""
        delays = []
        for _ in range(self.args.url_repeat):
            run, task, local = self.start(via_server, delay=2.0)
            try:
                line = run.wait_for(rf"Port {task['http']} is up at")
                printed = run.line_times[line.string]
                listened = float(run.wait_for(r"^listening-at (\S+)$", stream="stdout").group(1))
                delays.append(printed - listened)
            finally:
                self.finish(run, local["http"])
        return delays


def _port_of(url: str) -> int:
    match = re.search(r":(\d+)$", url)
    assert match is not None
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=512, help="bytes per bulk transfer (MB)")
    parser.add_argument("--repeat", type=int, default=5, help="bulk transfers per path")
    parser.add_argument("--requests", type=int, default=2000, help="requests per latency round (3 rounds)")
    parser.add_argument("--url-repeat", type=int, default=5, help="runs per path for the time to the URL")
    parser.add_argument("--no-ssh", dest="ssh", action="store_false", help="skip the ssh -L peer")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        with contextlib.ExitStack() as stack:
            if args.ssh:
                from peers import sshd_on_loopback

                bench.ssh = stack.enter_context(sshd_on_loopback())
            rows = bench.measure_paths()
            urls = {"shortcut": bench.time_to_url(False), "server": bench.time_to_url(True)}
    finally:
        bench.close()
    print(
        f"\nPorts benchmark: TCP {args.size_mb} MB and a 256 MB HTTP file, x{args.repeat} each; "
        f"{args.requests} requests x3; medians"
    )
    columns = ("path", "TCP MB/s", "share", "file MB/s", "share", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms")
    widths = (10, 9, 6, 10, 6, 8, 8, 8, 8)
    print(
        " ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths, strict=True))
        )
    )
    for path in ("loopback", "shortcut", "server", "2 relays", "ssh -L"):
        if path not in rows:
            continue
        r = rows[path]
        cells = [
            f"{r['tcp']:.0f}",
            f"{r['tcp_share'] * 100:.0f}%",
            f"{r['file']:.0f}",
            f"{r['file_share'] * 100:.0f}%",
            *(f"{r[key] * 1e3:.3f}" for key in ("p50", "p99", "added_p50", "added_p99")),
        ]
        print(f"{path:<10} " + " ".join(c.rjust(w) for c, w in zip(cells, widths[1:], strict=True)))
    print("\nTime from the app's port listening to the URL printed (s):")
    for path, values in urls.items():
        median, worst = statistics.median(values), max(values)
        print(f"  {path:<9} median {median:.3f}  max {worst:.3f}  ({len(values)} runs)")


if __name__ == "__main__":
    main()
