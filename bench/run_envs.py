"""Each run's own Python environment (issue 13, item 17): what it costs, against its floor and its peers.

    .venv/bin/python bench/run_envs.py [--runs N]

Goal: a warm per-run environment plus `pip install` of an already-downloaded package in at most 1 s, from
the job's submission to its end, through a real agent. Rows:
- floor: `cp -al` of the version's template (the cheapest copy there is), and `uv pip install` of the
  wheel into an existing venv (the cheapest install);
- the agent's own copy of the template (`clones.clone`, timed in this process);
- peers: a fresh `uv venv` seeded with pip, and `python -m venv` + pip (what a run without a template
  would pay);
- end to end through the agent: a `true` job, a `pip install` job (pip runs uv), and the same with pip
  itself (DSTACK_PIP=pip).
Medians of N runs, then min and max, in milliseconds. No Docker needed; no network (local wheels).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit" / "agent"), str(ROOT / "src"), str(ROOT / "bench")]

from agent_testkit import AgentClient, AgentProcess, agent_env  # noqa: E402
from tests.e2e.envkit import make_wheel  # noqa: E402

import environments  # noqa: E402 - bench/environments.py: its job timing
from dstack.agent.environments import pythons  # noqa: E402
from dstack.agent.environments.clones import clone  # noqa: E402

VERSION = "3.12"
GOAL_MS = 1000


def run_job(client: AgentClient, commands: list[str], **fields: object) -> float:
    """Seconds from submission to the end of a python job (bench/environments.py's measure)."""
    return environments.run_job(client, commands, python=VERSION, **fields)


def row(name: str, samples: list[float], mark: str = "") -> str:
    ms = [s * 1000 for s in samples]
    cells = f"{statistics.median(ms):>9.0f} | {min(ms):>6.0f} | {max(ms):>6.0f} | {len(ms):>3}"
    return f"| {name:<58} | {cells} | {mark:<4} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    uv = pythons.find_uv()
    interpreter = pythons.find_interpreters().get(VERSION)
    if uv is None or interpreter is None:
        raise SystemExit(f"needs uv and a Python {VERSION} on this host")
    work = Path(tempfile.mkdtemp(prefix="dstack-bench-envs-"))
    agent = None
    try:
        wheel = make_wheel(work / "wheels", "bench_pkg")
        env = agent_env(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        agent = AgentProcess(work / "agent", env=env).wait_ready()
        client = agent.client()
        run_job(client, ["true"])  # makes the 3.12 template once
        template = work / "agent" / "envs" / "python" / VERSION
        scratch = work / "scratch"
        scratch.mkdir()
        counter = iter(range(10**6))

        def fresh() -> Path:
            return scratch / f"c{next(counter)}"

        target_venv = scratch / "existing"
        subprocess.run([uv, "venv", "-q", "--python", interpreter, str(target_venv)], check=True)
        uv_env = {"PATH": "/usr/bin:/bin", "UV_NO_CONFIG": "1", "HOME": str(work)}

        def uv_install() -> None:
            subprocess.run(
                [uv, "pip", "install", "-q", "--no-index", "--reinstall", "--python",
                 str(target_venv / "bin" / "python"), str(wheel)],
                check=True, env=uv_env,
            )  # fmt: skip

        bundled = next(Path(interpreter).resolve().parent.parent.glob("lib/python3*/ensurepip/_bundled"))

        def uv_venv_with_pip() -> None:
            target = fresh()
            subprocess.run([uv, "venv", "-q", "--python", interpreter, str(target)], check=True, env=uv_env)
            subprocess.run(
                [uv, "pip", "install", "-q", "--offline", "--no-index", "--find-links", str(bundled),
                 "--python", str(target / "bin" / "python"), "pip"],
                check=True, env=uv_env,
            )  # fmt: skip

        def python_venv_pip() -> None:
            target = fresh()
            subprocess.run([interpreter, "-m", "venv", str(target)], check=True)
            subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                            "--disable-pip-version-check", str(wheel)], check=True)  # fmt: skip

        def hard_link_copy() -> None:
            subprocess.run(["cp", "-al", str(template), str(fresh())], check=True)

        def our_copy() -> None:
            clone(template, fresh())

        def install_job(**fields: object) -> float:
            return run_job(client, [f"pip install -q {wheel}"], **fields)

        few = min(runs, 5)
        installs = [install_job() for _ in range(runs)]
        verdict = "ok" if statistics.median(installs) * 1000 <= GOAL_MS else "over"
        rows = [
            row("floor: cp -al of the template", [environments.timed(hard_link_copy) for _ in range(runs)]),
            row(
                "floor: uv pip install of the wheel into a venv",
                [environments.timed(uv_install) for _ in range(runs)],
            ),
            row(
                "dstack: the run's copy of the template (clones.clone)",
                [environments.timed(our_copy) for _ in range(runs)],
            ),
            row(
                "peer: uv venv + pip from the bundled wheel",
                [environments.timed(uv_venv_with_pip) for _ in range(runs)],
            ),
            row(
                "peer: python -m venv + pip install",
                [environments.timed(python_venv_pip) for _ in range(few)],
            ),
            row(
                "agent job: python 3.12, `true` (copy + start + end)",
                [run_job(client, ["true"]) for _ in range(runs)],
            ),
            row("agent job: `pip install` of a downloaded wheel (uv's pip)", installs, verdict),
            row(
                "agent job: the same with pip itself (DSTACK_PIP=pip)",
                [install_job(env={"DSTACK_PIP": "pip"}) for _ in range(few)],
            ),
        ]
        title = "Python environment of each run"
        print(f"| {title:<58} | {'median ms':>9} | {'min':>6} | {'max':>6} | {'n':>3} | goal |")
        print(f"|{'-' * 60}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 5}|{'-' * 6}|")
        for line in rows:
            print(line)
        print(f"\ngoal: a warm per-run environment plus pip install in at most {GOAL_MS} ms (end to end)")
    finally:
        if agent is not None:
            agent.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
