"""`priority` and `schedule`, end to end: the order in which waiting runs start, and a run that starts at its
cron time (UTC), shows its next start in `dstack ps`, and waits for the next one after it ends."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.runkit import run_json, stamp, status, write

pytestmark = pytest.mark.e2e

CPUS = len(os.sched_getaffinity(0))  # what the agent reports for this machine
STAMP = "  - echo START=$(date +%s.%N)\n"


def test_waiting_runs_start_highest_priority_first(dstack_env: DstackEnv, project_dir: Path) -> None:
    gate = project_dir / "gate"
    write(
        project_dir / "blocker.dstack.yml",
        f"type: task\ncommands:\n{STAMP}"
        f"  - for i in $(seq 1200); do [ -e {gate} ] && break; sleep 0.1; done\n",
    )
    for name, priority in (("low", 10), ("mid", 50), ("high", 90)):
        write(project_dir / f"{name}.dstack.yml", f"type: task\npriority: {priority}\ncommands:\n{STAMP}")
    whole = ["--cpu", str(CPUS)]  # each run needs the whole machine: they run one at a time
    dstack_env.run(
        "run", ".", "-f", "blocker.dstack.yml", "-n", "blocker", "-y", "-d", *whole, cwd=project_dir
    )
    wait_for(lambda: status(dstack_env, "blocker") == "running", timeout=60, what="the blocker to run")
    # Submitted lowest priority first: first come, first served would start them in this order.
    for name in ("low", "mid", "high"):
        result = dstack_env.run(
            "run", ".", "-f", f"{name}.dstack.yml", "-n", name, "-y", "-d", *whole, "--retry-limit", "10m",
            cwd=project_dir,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"Priority       {run_json(dstack_env, name)['priority']}" in result.stderr
    for name in ("low", "mid", "high"):
        wait_for(lambda n=name: status(dstack_env, n) == "pending", timeout=60, what=f"{name} to wait")
    gate.touch()
    for name in ("low", "mid", "high"):
        wait_for(lambda n=name: status(dstack_env, n) == "done", timeout=180, what=f"{name} to end")
    starts = {name: stamp(dstack_env, name, "START") for name in ("low", "mid", "high")}
    assert sorted(starts, key=starts.__getitem__) == ["high", "mid", "low"], starts


def test_a_scheduled_run_starts_at_its_time_and_waits_for_the_next(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    # Far enough from the end of a minute that the run is seen waiting before it fires.
    if dt.datetime.now(dt.timezone.utc).second > 45:
        time.sleep(62 - dt.datetime.now(dt.timezone.utc).second)
    write(project_dir / ".dstack.yml", f"type: task\nschedule:\n  cron: '* * * * *'\ncommands:\n{STAMP}")
    result = dstack_env.run("run", ".", "-n", "every-minute", "-y", cwd=project_dir, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Schedule       * * * * * UTC (next start " in result.stderr
    assert "Run every-minute is scheduled to start at " in result.stderr  # it does not hold the terminal
    first = run_json(dstack_env, "every-minute")
    assert first["status"] == "pending" and first["next_start_at"] is not None
    due = float(first["next_start_at"])
    assert due % 60 == 0
    shown = dt.datetime.fromtimestamp(due, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    assert f"scheduled (next start {shown})" in dstack_env.run("ps", check=True).stdout
    # It fires within its minute, runs, and then waits for the next minute.
    wait_for(
        lambda: "START=" in dstack_env.run("logs", "every-minute").stdout, timeout=150, what="the first start"
    )
    started = stamp(dstack_env, "every-minute", "START")
    assert due <= started < due + 60
    wait_for(
        lambda: (run_json(dstack_env, "every-minute").get("next_start_at") or 0) > due,
        timeout=120,
        what="the next start",
    )
    again = run_json(dstack_env, "every-minute")
    assert again["status"] == "pending" and again["next_start_at"] == due + 60
    assert "(last run: done)" in str(again["status_message"])
    dstack_env.run("stop", "every-minute", "-y", check=True)
    assert status(dstack_env, "every-minute") == "terminated"
