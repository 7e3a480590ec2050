"""Benchmark of `dstack run --reload` on this machine: edit-to-applied latency and 1,000-file bursts.

Runs the real CLI, server and agent in a throw-away HOME with a task that just sleeps, edits files in
the project and times how long until the task's copy of the code (jobs/<id>/code under the local agent)
holds the change. Prints a table; run it from the repository root:

    .venv/bin/python bench/reload.py [--edits 100] [--bursts 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import DstackEnv, wait_for

POLL = 0.0005  # seconds between looks at the task's copy
GIT = ["git", "-c", "user.email=bench@example.com", "-c", "user.name=bench"]


def until(condition: Callable[[], bool], timeout: float = 60.0) -> float:
    """Seconds until condition() holds (polled every POLL)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise RuntimeError("the change did not arrive within a minute")
        time.sleep(POLL)
    return time.perf_counter() - start


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def batches(env: DstackEnv) -> int:
    log = env.home / ".dstack" / "server" / "agents" / "local" / "agent.log"
    return log.read_text().count("reload batch applied")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=100, help="single edits to time (default 100)")
    parser.add_argument("--bursts", type=int, default=3, help="bursts of each kind (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dstack-bench-reload-") as scratch:
        env = DstackEnv(Path(scratch) / "home")
        project = env.home / "project"
        (project / "burst").mkdir(parents=True)
        (project / ".dstack.yml").write_text("type: task\ncommands:\n  - sleep 3600\n")
        for i in range(1000):
            (project / "burst" / f"f{i:04}.txt").write_text("a")
        subprocess.run([*GIT, "init", "-q", "-b", "a"], cwd=project, check=True)
        subprocess.run([*GIT, "add", "-A"], cwd=project, check=True)
        subprocess.run([*GIT, "commit", "-qm", "a"], cwd=project, check=True)
        subprocess.run([*GIT, "checkout", "-qb", "b"], cwd=project, check=True)
        for i in range(1000):
            (project / "burst" / f"f{i:04}.txt").write_text("b")
        subprocess.run([*GIT, "commit", "-qam", "b"], cwd=project, check=True)
        cli = env.popen("run", ".", "-y", "--reload", cwd=project, stdout=subprocess.DEVNULL, stderr=None)
        try:
            jobs = env.home / ".dstack" / "server" / "agents" / "local" / "jobs"
            remote = wait_for(
                lambda: next(iter(jobs.glob("*/code/.dstack.yml")), None), timeout=120, what="the task"
            ).parent
            probe, remote_probe = project / "probe.txt", remote / "probe.txt"
            probe.write_text("warm-up")
            until(lambda: read(remote_probe) == b"warm-up", timeout=120)  # the task runs, the link is warm

            latencies = []
            for i in range(args.edits):
                content = f"edit {i} {time.time()}".encode()
                probe.write_bytes(content)
                latencies.append(until(lambda c=content: read(remote_probe) == c))
                time.sleep(0.2)  # separate saves, as a person makes them

            checkouts, checkout_batches = [], []
            for i in range(args.bursts * 2):
                branch, want = ("a", b"a") if i % 2 == 0 else ("b", b"b")
                before = batches(env)
                start = time.perf_counter()
                subprocess.run([*GIT, "checkout", "-q", branch], cwd=project, check=True)
                remote_files = [remote / "burst" / f"f{n:04}.txt" for n in range(1000)]
                until(lambda w=want, r=remote_files: all(read(p) == w for p in r))
                checkouts.append(time.perf_counter() - start)
                time.sleep(1.0)  # let the log line land before counting
                checkout_batches.append(batches(env) - before)

            creations = []
            for round_ in range(args.bursts):
                folder = project / f"new{round_}"
                folder.mkdir()
                start = time.perf_counter()
                for n in range(1000):
                    (folder / f"n{n:04}.txt").write_text(str(n))
                wrote = time.perf_counter() - start
                copy = remote / folder.name
                until(lambda c=copy: _count(c) == 1000 and read(c / "n0999.txt") == b"999")
                creations.append((wrote, time.perf_counter() - start))
        finally:
            cli.terminate()
            try:
                cli.wait(10)
            except subprocess.TimeoutExpired:
                cli.kill()
            env.cleanup()

    ms = 1000.0
    rows = [
        ("edit -> applied, p50", f"{statistics.median(latencies) * ms:.0f} ms", f"{args.edits} edits"),
        ("edit -> applied, p99", f"{percentile(latencies, 0.99) * ms:.0f} ms", ""),
        ("edit -> applied, max", f"{max(latencies) * ms:.0f} ms", ""),
        (
            "git checkout of 1,000 files -> applied",
            f"{statistics.median(checkouts) * ms:.0f} ms",
            f"median of {len(checkouts)}; batches each: {','.join(map(str, checkout_batches))}",
        ),
        (
            "1,000 new files written -> applied",
            f"{statistics.median(t for _, t in creations) * ms:.0f} ms",
            f"median of {len(creations)}; writing them took "
            f"{statistics.median(w for w, _ in creations) * ms:.0f} ms",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>8}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>8}  {note}")
    return 0


def _count(folder: Path) -> int:
    try:
        return sum(1 for _ in folder.iterdir())
    except OSError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
