"""Start overhead of each environment, against plain `bash -c` and plain `docker run`, in one run.

    .venv/bin/python bench/environments.py [--runs N]

Needs root (it starts a private dockerd, as the tests do) and the test images (tests/dockerd.py). Every
agent figure is from POST /api/jobs to the job's final status, for a job whose command is `true`, seen
through the log long-poll (which wakes on the status change). Medians of N runs, then min and max.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit" / "agent")]

from agent_testkit import AgentClient, AgentProcess, agent_env, file_member, make_tar  # noqa: E402
from tests.dockerd import BUSYBOX_IMAGE, import_busybox, start_dockerd, stop_dockerd  # noqa: E402
from tests.e2e.envkit import make_wheel  # noqa: E402

FINAL = ("done", "failed", "terminated")


def run_job(client: AgentClient, commands: list[str], **fields: Any) -> float:
    """Seconds from submit to the job's final status; fails loudly if the job did not succeed."""
    started = time.perf_counter()
    job = client.submit(commands, **fields)
    offset = 0
    while True:
        response = client.request("GET", f"/api/jobs/{job['id']}/logs?offset={offset}&wait=10")
        offset = int(response.headers["x-log-end"])
        if response.headers["x-job-status"] in FINAL and offset == int(response.headers["x-log-size"]):
            break
    elapsed = time.perf_counter() - started
    state = client.job(job["id"])
    if state["status"] != "done":
        raise SystemExit(f"benchmark job failed: {state}")
    client.request("DELETE", f"/api/jobs/{job['id']}")
    return elapsed


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(runs: int, one: Callable[[], float]) -> list[float]:
    return [one() for _ in range(runs)]


def row(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"| {name:<44} | {statistics.median(ms):>8.0f} | {min(ms):>6.0f} | {max(ms):>6.0f} | {len(ms):>3} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs

    daemon = start_dockerd()
    work = Path(tempfile.mkdtemp(prefix="dstk-bench-"))
    agent = None
    try:
        import_busybox(daemon)
        docker_env = {"DOCKER_HOST": daemon.host, "PATH": "/usr/local/bin:/usr/bin:/bin"}
        env = agent_env(DOCKER_HOST=daemon.host, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        agent = AgentProcess(work / "agent", env=env).wait_ready()
        client = agent.client()
        wheel = make_wheel(work / "wheels", "bench_pkg").read_bytes()
        code = client.upload(
            make_tar(
                [
                    file_member("requirements.txt", b"wheels/bench_pkg-1.0-py3-none-any.whl\n"),
                    file_member("wheels/bench_pkg-1.0-py3-none-any.whl", wheel),
                ]
            )
        )
        # Every agent job gets the same (small) code archive to unpack, so rows differ by environment only.
        python_build = {"python": "3.12", "code_hash": code, "build": ["pip install -q -r requirements.txt"]}
        image_build = {
            "image": BUSYBOX_IMAGE,
            "code_hash": code,
            "build": ["mkdir -p /opt && echo baked > /opt/marker"],
        }

        rows = []
        rows.append(
            row("plain `bash -c true`", measure(runs, lambda: timed(lambda: _check(["bash", "-c", "true"]))))
        )
        rows.append(
            row(
                "plain `docker run --rm --network host` true",
                measure(
                    runs,
                    lambda: timed(
                        lambda: _check(
                            ["docker", "run", "--rm", "--network", "host", BUSYBOX_IMAGE, "true"], docker_env
                        )
                    ),
                ),
            )
        )
        rows.append(
            row(
                "agent: process (no python, no image)",
                measure(runs, lambda: run_job(client, ["true"], code_hash=code)),
            )
        )
        rows.append(
            row(
                "agent: python 3.12 venv, first (creates it)",
                [run_job(client, ["true"], python="3.12", code_hash=code)],
            )
        )
        rows.append(
            row(
                "agent: python 3.12 venv, warm",
                measure(runs, lambda: run_job(client, ["true"], python="3.12", code_hash=code)),
            )
        )
        rows.append(
            row(
                "agent: container (busybox)",
                measure(runs, lambda: run_job(client, ["true"], image=BUSYBOX_IMAGE, code_hash=code)),
            )
        )
        rows.append(
            row(
                "agent: python build, building (pip install)",
                measure(runs, lambda: run_job(client, ["true"], build_policy="force-build", **python_build)),
            )
        )
        rows.append(
            row(
                "agent: python build, cached",
                measure(runs, lambda: run_job(client, ["true"], build_policy="use-build", **python_build)),
            )
        )
        rows.append(
            row(
                "agent: image build, building (commit)",
                measure(runs, lambda: run_job(client, ["true"], build_policy="force-build", **image_build)),
            )
        )
        rows.append(
            row(
                "agent: image build, cached",
                measure(runs, lambda: run_job(client, ["true"], build_policy="use-build", **image_build)),
            )
        )
        title = "start to end of a `true` job"
        print(f"| {title:<44} | {'median ms':>8} | {'min':>6} | {'max':>6} | {'n':>3} |")
        print(f"|{'-' * 46}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 5}|")
        for line in rows:
            print(line)
    finally:
        if agent is not None:
            agent.terminate()
        stop_dockerd(daemon)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _check(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, env=env)


if __name__ == "__main__":
    main()
