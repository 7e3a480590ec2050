"""Scheduler benchmark: 1,000 tiny tasks at once, and `dstack ps` with 100,000 runs in the database.

    .venv/bin/python bench/scheduler.py [--tasks 1000] [--runs 100000] [--repeat 3] [--only tasks|ps]

Everything runs in a throw-away HOME: its own server (started with `dstack server`), its own local agent,
its own SQLite database; every process it started is killed at the end.

- tasks: N `echo` tasks submitted at once through the Python API client (16 threads, one client each),
  from the first submit to the last `done` (the runs' own `finished_at`). Goals (issue 15): >= 150 tasks/s,
  server CPU <= 8 ms per task, server peak RSS (VmHWM) <= 200 MB. Peer, measured in the same run: Slurm
  on this machine (a one-node cluster started for the run, bench/peers.py), N `echo` jobs with `sbatch`
  one by one (16 submitters, as above) and as one job array, from the first submit to the last end.
- handoff: 20 tasks that each ask for every CPU, queued with a retry window: the gap from one task's last
  line to the next one's first (SPEC: a waiting run starts within a second of capacity freeing).
- ps: 100,000 finished runs (plus a few active ones) written straight into the database, then the
  runs list through the API and the whole `dstack ps` command (process start to exit). Goal: <= 100 ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

from tests.e2e.harness import wait_for  # noqa: E402

from dstack.api.client import Client  # noqa: E402
from peers import machine_line  # noqa: E402

BIN = Path(sys.executable).parent
DSTACK = str(BIN / "dstack")
TOKEN = "bench-token"
# --src: another checkout's src folder, for the server and agent (an A/B against another commit).
SOURCE: dict[str, str] = {}
SUBMIT_THREADS = 16


class Server:
    """A `dstack server` in its own HOME; `stop()` kills it, its agent and every task under that HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "HOME": str(home),
            "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
            "DSTACK_SERVER_ADMIN_TOKEN": TOKEN,
            **({"PYTHONPATH": SOURCE["src"]} if SOURCE else {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.home / "server.out").open("ab")
        self.process = subprocess.Popen(
            [DSTACK, "server", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: _healthy(self.url), timeout=60, what="the server to answer")

    def client(self) -> Client:
        return Client(self.url, TOKEN, "main", timeout=120)

    def peak_rss_mb(self) -> float:
        assert self.process is not None
        return _status_kb(self.process.pid, "VmHWM") / 1024

    def agent_pid(self) -> int | None:
        try:
            info = json.loads((self.home / ".dstack/server/agents/local/agent.json").read_text())
            return int(info["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        self._keep_logs()
        needle = f"HOME={self.home}".encode() + b"\0"
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if needle in environ or environ.endswith(needle[:-1]):
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.process is not None:
            self.process.wait(timeout=10)

    def _keep_logs(self) -> None:
        """The server's and agent's logs outlive the throw-away HOME, for a look after a failure."""
        keep = Path(tempfile.gettempdir()) / "dstack-bench-logs"
        keep.mkdir(exist_ok=True)
        for name, path in (
            ("server.log", self.home / "server.out"),
            ("agent.log", self.home / ".dstack/server/agents/local/agent.log"),
        ):
            try:
                (keep / name).write_bytes(path.read_bytes())
            except OSError:
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        Client(url, TOKEN, timeout=2).me()
        return True
    except Exception:
        return False


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU time of a process (utime + stime), or of its reaped children (the agent's: the tasks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def tiny_spec() -> dict[str, Any]:
    from dstack.config import parse_configuration, parse_overrides, resolve_profile

    configuration = parse_configuration("type: task\ncommands: ['echo hi']\n", filename="tiny.dstack.yml")
    profile = resolve_profile(configuration, None, parse_overrides())
    return {
        "configuration_path": "tiny.dstack.yml",
        "configuration": configuration.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "commands": ["echo hi"],
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


# -- 1,000 tiny tasks ---------------------------------------------------------------------------------


def bench_tasks(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dstack-bench-") as tmp:
        server = Server(Path(tmp))
        try:
            server.start()
            spec = tiny_spec()
            # Warm up: the agent is started and one task runs through, so its start is not measured.
            warm = server.client()
            warm.submit({**spec, "run_name": "warm-up"})
            wait_for(lambda: warm.get_run("warm-up")["status"] == "done", timeout=60, what="the warm-up task")
            local = threading.local()

            def submit(i: int) -> float:
                if not hasattr(local, "client"):
                    local.client = server.client()
                started = time.perf_counter()
                local.client.submit({**spec, "run_name": f"tiny-{i}"})
                return time.perf_counter() - started

            assert server.process is not None
            agent = server.agent_pid()
            cpu_before = (
                _cpu_seconds(server.process.pid),
                _cpu_seconds(agent) if agent else 0.0,
                _cpu_seconds(agent, children=True) if agent else 0.0,
                time.process_time(),
            )
            first_submit = time.time()
            with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
                latencies = list(pool.map(submit, range(count)))
            submitted = time.time()
            client = server.client()

            def all_finished() -> list[dict[str, Any]] | None:
                runs = [r for r in client.list_runs(all=True, limit=count + 1) if r["name"] != "warm-up"]
                return runs if all(r["finished_at"] for r in runs) and len(runs) == count else None

            runs = wait_for(all_finished, timeout=600, what=f"{count} tasks to finish", interval=0.5)
            last_done = max(r["finished_at"] for r in runs)
            statuses = {r["status"] for r in runs}
            if statuses != {"done"}:
                raise SystemExit(f"some tasks did not end done: {statuses}")
            # The agent removes finished jobs' folders once it is quiet: that work is the tasks' too.
            jobs_dir = server.home / ".dstack/server/agents/local/jobs"
            wait_for(
                lambda: not any(jobs_dir.iterdir()), timeout=60, what="the agent to remove the job folders"
            )
            cpu_after = (
                _cpu_seconds(server.process.pid),
                _cpu_seconds(agent) if agent else 0.0,
                _cpu_seconds(agent, children=True) if agent else 0.0,
                time.process_time(),
            )
            return {
                "tasks": count,
                "submit_s": submitted - first_submit,
                "total_s": last_done - first_submit,
                "tasks_per_s": count / (last_done - first_submit),
                "submit_p50_ms": statistics.median(latencies) * 1000,
                "server_peak_mb": server.peak_rss_mb(),
                "agent_peak_mb": _status_kb(agent, "VmHWM") / 1024 if agent else 0.0,
                "server_cpu_ms_per_task": (cpu_after[0] - cpu_before[0]) / count * 1000,
                "agent_cpu_ms_per_task": (cpu_after[1] - cpu_before[1]) / count * 1000,
                "tasks_cpu_ms_per_task": (cpu_after[2] - cpu_before[2]) / count * 1000,
                "client_cpu_ms_per_task": (cpu_after[3] - cpu_before[3]) / count * 1000,
            }
        finally:
            server.stop()


# -- the peer: Slurm on this machine --------------------------------------------------------------------


def bench_slurm(count: int) -> dict[str, float]:
    from peers import slurm_cluster

    with slurm_cluster() as slurm:
        done_file = slurm.root / "log" / "jobcomp.txt"

        def ended() -> int:
            try:
                return sum(1 for _ in done_file.open())
            except OSError:
                return 0

        def submit(_: int) -> None:
            slurm.run("sbatch", "--wrap", "echo hi", "-o", "/dev/null", "-c", "1")

        started = time.time()
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            list(pool.map(submit, range(count)))
        wait_for(lambda: ended() >= count, timeout=900, what=f"{count} Slurm jobs to end", interval=0.2)
        one_by_one = count / (time.time() - started)
        before = ended()
        started = time.time()
        slurm.run("sbatch", f"--array=1-{count}", "--wrap", "echo hi", "-o", "/dev/null", "-c", "1")
        wait_for(lambda: ended() >= before + count, timeout=900, what="the job array to end", interval=0.2)
        array = count / (time.time() - started)
    return {"slurm_sbatch_per_s": one_by_one, "slurm_array_per_s": array}


# -- hand-over: tasks that each need the whole machine, queued ----------------------------------------


def bench_handoff(count: int) -> dict[str, float]:
    """Queued tasks asking for every CPU run one by one: the gap from one's last line to the next's first."""
    from dstack.config import parse_configuration, parse_overrides, resolve_profile

    script = ["echo START=$(date +%s.%N)", "sleep 0.3", "echo END=$(date +%s.%N)"]
    text = "type: task\ncommands:\n" + "".join(f"  - {json.dumps(c)}\n" for c in script)
    configuration = parse_configuration(text, filename="whole.dstack.yml")
    cpus = str(len(os.sched_getaffinity(0)))
    profile = resolve_profile(configuration, None, parse_overrides(cpu=cpus, retry_limit="10m"))
    spec = {
        "configuration": configuration.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "commands": script,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    with tempfile.TemporaryDirectory(prefix="dstack-bench-") as tmp:
        server = Server(Path(tmp))
        try:
            server.start()
            client = server.client()
            for i in range(count):
                client.submit({**spec, "run_name": f"whole-{i}"})

            def finished() -> bool:
                return all(r["status"] == "done" for r in client.list_runs(all=True, limit=count))

            wait_for(finished, timeout=60 + count * 5, what=f"{count} queued tasks to finish", interval=0.5)
            spans = []
            for i in range(count):
                out = b"".join(client.logs(f"whole-{i}")).decode()
                values = dict(line.split("=", 1) for line in out.split() if "=" in line)
                spans.append((float(values["START"]), float(values["END"])))
            spans.sort()
            gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(spans)]
            assert min(gaps) > 0, "two tasks that each need every CPU overlapped"
            return {
                "tasks": count,
                "gap_p50_ms": statistics.median(gaps) * 1000,
                "gap_max_ms": max(gaps) * 1000,
            }
        finally:
            server.stop()


# -- ps with 100,000 runs ------------------------------------------------------------------------------


def fill_database(db: Path, count: int, active: int) -> None:
    """Runs as the server writes them, straight into SQLite (through the API this would take an hour)."""
    conn = sqlite3.connect(db)
    project_id, user_id = conn.execute("SELECT project_id, user_id FROM members LIMIT 1").fetchone()
    spec = json.dumps({**tiny_spec(), "run_name": "x"})
    now = time.time()
    rows = []
    for i in range(count):
        status = "running" if i >= count - active else "done"
        rows.append(
            (
                str(uuid.uuid4()),
                project_id,
                user_id,
                f"bench-run-{i}",
                now - (count - i),
                status,
                None if status == "running" else now - (count - i) + 1,
                spec,
                "local",
                "2xCPU, 24GB (shared)",
                0.0,
                "tiny.dstack.yml",
            )
        )
    conn.executemany(
        "INSERT INTO runs (id, project_id, user_id, name, submitted_at, status, finished_at, spec, backend,"
        " resources, price, configuration_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()


def bench_ps(count: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dstack-bench-") as tmp:
        server = Server(Path(tmp))
        try:
            server.start()
            fill_database(Path(tmp) / ".dstack/server/data/sqlite.db", count, active=5)
            client = server.client()
            subprocess.run(
                [DSTACK, "config", "--url", server.url, "--token", TOKEN],
                env=server.env,
                check=True,
                capture_output=True,
            )
            api, api_all, command, command_all = [], [], [], []
            for _ in range(max(repeat, 5)):
                started = time.perf_counter()
                shown = client.list_runs()
                api.append(time.perf_counter() - started)
                started = time.perf_counter()
                client.list_runs(all=True, limit=50)
                api_all.append(time.perf_counter() - started)
                for args, sink in ((["ps"], command), (["ps", "-a", "-n", "50"], command_all)):
                    started = time.perf_counter()
                    out = subprocess.run([DSTACK, *args], env=server.env, capture_output=True, check=True)
                    sink.append(time.perf_counter() - started)
            assert len(shown) == 5, f"ps showed {len(shown)} runs, expected the 5 active ones"
            assert out.stdout.count(b"bench-run-") == 50
            return {
                "runs": count,
                "api_ps_ms": statistics.median(api) * 1000,
                "api_ps_all50_ms": statistics.median(api_all) * 1000,
                "cmd_ps_ms": statistics.median(command) * 1000,
                "cmd_ps_all50_ms": statistics.median(command_all) * 1000,
            }
        finally:
            server.stop()


def bare_python_ms(repeat: int) -> float:
    """What any Python command costs here: the floor under `dstack ps`."""
    times = []
    for _ in range(max(repeat, 5)):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--handoff", type=int, default=20, help="queued whole-machine tasks")
    parser.add_argument("--only", choices=["tasks", "handoff", "ps"])
    parser.add_argument("--src", help="run the server and agent from this src folder (another commit's)")
    parser.add_argument("--no-slurm", dest="slurm", action="store_false", help="skip the Slurm peer")
    args = parser.parse_args()
    if args.src:
        if not (Path(args.src) / "dstack" / "__init__.py").is_file():
            parser.error(f"--src {args.src} holds no dstack package (give a checkout's src folder)")
        SOURCE["src"] = str(Path(args.src).resolve())
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if args.only in (None, "tasks"):
        results = [bench_tasks(args.tasks) for _ in range(args.repeat)]
        print(f"\n{args.tasks} tiny tasks at once ({args.repeat} rounds; median, then each round)")
        print(f"{'metric':<18}{'median':>10}   rounds")
        for key in (
            "submit_s",
            "total_s",
            "tasks_per_s",
            "submit_p50_ms",
            "server_peak_mb",
            "agent_peak_mb",
            "server_cpu_ms_per_task",
            "agent_cpu_ms_per_task",
            "tasks_cpu_ms_per_task",
            "client_cpu_ms_per_task",
        ):
            values = [r[key] for r in results]
            shown = "  ".join(f"{v:.1f}" for v in values)
            print(f"{key:<18}{statistics.median(values):>10.1f}   {shown}")
        if args.slurm:
            peer = bench_slurm(args.tasks)
            print(f"peer: Slurm, {args.tasks} `echo hi` jobs on a one-node cluster of this machine")
            print(f"{'sbatch one by one':<18}{peer['slurm_sbatch_per_s']:>10.1f}   jobs/s (16 submitters)")
            print(f"{'sbatch --array':<18}{peer['slurm_array_per_s']:>10.1f}   jobs/s")
        print(machine_line())
    if args.only in (None, "handoff"):
        results = [bench_handoff(args.handoff) for _ in range(args.repeat)]
        print(f"\n{args.handoff} queued tasks that each ask for every CPU: one's end to the next's start")
        for key in ("gap_p50_ms", "gap_max_ms"):
            values = [r[key] for r in results]
            shown = "  ".join(f"{v:.0f}" for v in values)
            print(f"{key:<18}{statistics.median(values):>10.0f}   {shown}")
    if args.only in (None, "ps"):
        result = bench_ps(args.runs, args.repeat)
        print(f"\n`dstack ps` with {args.runs} runs in the database (median of {max(args.repeat, 5)})")
        for key, value in result.items():
            print(f"{key:<18}{value:>10.1f}")
        print(f"{'python -c pass':<18}{bare_python_ms(args.repeat):>10.1f}   (the floor of any command)")


if __name__ == "__main__":
    main()
