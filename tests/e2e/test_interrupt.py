"""Ctrl+C while attached (SPEC §4): a prompt to stop; no detaches; yes stops; a second Ctrl+C aborts."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.harness import DstackEnv, Terminal, pids_with_env, wait_for
from tests.e2e.test_run import task


def _status(env: DstackEnv, name: str) -> str:
    ps = env.run("ps", "-a", check=True).stdout
    match = re.search(
        rf"^\s*{name}\s.*?\s(submitted|pending|provisioning|pulling|running|terminating|done|failed|terminated|aborted)\b",
        ps,
        re.M,
    )
    return match.group(1) if match else "missing"


def test_ctrl_c_no_detaches_and_yes_stops(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["echo working", "sleep 1000"])
    terminal = Terminal(dstack_env, "run", ".", "-y", "-n", "ctrl-c-run", cwd=project_dir)
    try:
        terminal.expect("working")
        terminal.interrupt()
        terminal.expect("Stop the run before detaching? [y/n]")
        terminal.type("n\r")
        assert terminal.wait() == 0
        assert "Detached" in terminal.text
    finally:
        terminal.close()
    # The status write may trail the output a moment on a loaded machine; the run must settle as running.
    wait_for(
        lambda: _status(dstack_env, "ctrl-c-run") == "running", timeout=15, what="the run to show running"
    )

    terminal = Terminal(dstack_env, "attach", "ctrl-c-run")
    try:
        terminal.expect("working")  # attach replays the output from the start
        terminal.interrupt()
        terminal.expect("Stop the run before detaching? [y/n]")
        terminal.type("y\r")
        assert terminal.wait() == 1
    finally:
        terminal.close()
    assert _status(dstack_env, "ctrl-c-run") == "terminated"
    assert not pids_with_env("DSTACK_RUN_NAME=ctrl-c-run")


def test_second_ctrl_c_aborts(dstack_env: DstackEnv, project_dir: Path) -> None:
    # The task ignores SIGTERM, so a graceful stop would take the whole grace period; a second Ctrl+C aborts.
    task(project_dir, ["trap '' TERM", "echo stubborn", "sleep 1000"])
    terminal = Terminal(dstack_env, "run", ".", "-y", "-n", "abort-run", cwd=project_dir)
    try:
        terminal.expect("stubborn")
        terminal.interrupt()
        terminal.expect("Stop the run before detaching? [y/n]")
        terminal.type("y\r")
        terminal.expect("Stopping")
        terminal.interrupt()
        assert terminal.wait() == 1
        assert "Aborted" in terminal.text
    finally:
        terminal.close()
    wait_for(lambda: _status(dstack_env, "abort-run") == "aborted", timeout=30, what="the run to be aborted")
    wait_for(lambda: not pids_with_env("DSTACK_RUN_NAME=abort-run"), timeout=30, what="its processes to end")
