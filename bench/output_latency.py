"""How soon a line a task prints can be read from its agent (live output), and the agent's bulk rate.

    .venv/bin/python bench/output_latency.py [--lines 200] [--mib 512]

A real agent in a throwaway folder runs a task that prints its own clock every 20 ms; a reader long-polls
the agent's log API (as the server does) and measures, per line, the time from print to read. The peer in
the same run: the same task writing to a pipe that the reader reads directly (the floor: one process
writing, one reading). The bulk figure is `head -c N /dev/zero` through the agent's API, next to the same
bytes read from a pipe.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PRINTER = (
    "import sys, time\n"
    "for i in range({n}):\n"
    "    sys.stdout.write('%.6f\\n' % time.time()); sys.stdout.flush(); time.sleep(0.02)\n"
)


class Agent:
    def __init__(self, folder: Path, src: Path = SRC) -> None:
        self.token = secrets.token_hex(16)
        env = {**os.environ, "DSTACK_AGENT_TOKEN": self.token, "PYTHONPATH": str(src)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dstack.agent", "--work-dir", str(folder)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        info_file = folder / "agent.json"
        while not info_file.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not start")
            time.sleep(0.02)
        self.port = int(json.loads(info_file.read_text())["port"])
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def call(self, method: str, path: str, body: object = None) -> tuple[http.client.HTTPResponse, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response, response.read()

    def submit(self, command: str) -> str:
        job_id = "bench-" + secrets.token_hex(4)
        response, body = self.call(
            "POST", "/api/jobs", {"id": job_id, "run_name": "bench", "commands": [command]}
        )
        assert response.status in (200, 201), body
        return job_id

    def follow(self, job_id: str, on_data: object) -> None:
        offset = 0
        while True:
            path = f"/api/jobs/{job_id}/logs?offset={offset}&wait=5&limit=16777216"
            response, data = self.call("GET", path)
            if data:
                on_data(data)  # type: ignore[operator]
            offset = int(response.getheader("X-Log-End") or offset)
            size = int(response.getheader("X-Log-Size") or 0)
            if response.getheader("X-Job-Status") in ("done", "failed", "terminated") and offset >= size:
                return

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def latencies_from(lines: list[tuple[float, bytes]]) -> list[float]:
    return [read_at - float(line) for read_at, line in lines if line.strip()]


def via_agent(agent: Agent, n: int) -> list[float]:
    job = agent.submit(f"{sys.executable} -c {_quote(PRINTER.format(n=n))}")
    seen: list[tuple[float, bytes]] = []
    pending = b""

    def on_data(data: bytes) -> None:
        nonlocal pending
        now = time.time()
        pending += data
        *complete, pending = pending.split(b"\n")
        seen.extend((now, line) for line in complete)

    agent.follow(job, on_data)
    return latencies_from(seen)


def via_pipe(n: int) -> list[float]:
    process = subprocess.Popen([sys.executable, "-c", PRINTER.format(n=n)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    seen = [(time.time(), line) for line in iter(process.stdout.readline, b"")]
    process.wait()
    return latencies_from(seen)


def bulk_via_agent(agent: Agent, size: int) -> float:
    start = time.perf_counter()
    job = agent.submit(f"head -c {size} /dev/zero")
    total = 0

    def on_data(data: bytes) -> None:
        nonlocal total
        total += len(data)

    agent.follow(job, on_data)
    assert total == size, (total, size)
    return size / 1e6 / (time.perf_counter() - start)


def bulk_via_pipe(size: int) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    total = 0
    while chunk := process.stdout.read(1 << 20):
        total += len(chunk)
    process.wait()
    return size / 1e6 / (time.perf_counter() - start)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(samples) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--src", type=Path, default=SRC, help="the agent's source tree (compare two)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dstack-bench-agent-"))
    agent = Agent(folder / "work", args.src)
    try:
        agent_latency = via_agent(agent, args.lines)
        pipe_latency = via_pipe(args.lines)
        size = args.mib * 1024 * 1024
        agent_rate = bulk_via_agent(agent, size)
        pipe_rate = bulk_via_pipe(size)
        print(f"live line latency, task -> agent API: {_ms(agent_latency)}")
        print(f"live line latency, task -> pipe (floor): {_ms(pipe_latency)}")
        print(f"{args.mib} MiB through the agent API: {agent_rate:.0f} MB/s (pipe: {pipe_rate:.0f} MB/s)")
    finally:
        agent.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
