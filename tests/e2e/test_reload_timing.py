"""`--reload` never loses an edit (issue 13, item 4), made at any moment after `dstack run` starts — before
the code is packed, while it uploads, as the task starts, just after it answers — on a busy machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.test_reload import START_TIMEOUT, SYNC_TIMEOUT, free_port, get, start, stop_cli, write_config

pytestmark = pytest.mark.e2e

BURNERS = 4  # busy-looping processes: the machine has 2 cores, so everything runs late


@pytest.fixture
def busy_machine() -> Iterator[None]:
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(BURNERS)
    ]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)


# Moments after `dstack run` starts, as what the CLI has printed (None: at once).
MOMENTS = [None, "Uploading the code", "Started", "answering", "answering+0.05", "answering+0.3"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_an_edit_at_any_moment_after_run_starts_reaches_the_task(
    dstack_env: DstackEnv, project_dir: Path, busy_machine: None, moment: str | None
) -> None:
    port = free_port()
    write_config(project_dir, [f"python3 -m http.server {port} --bind 127.0.0.1"])
    page = project_dir / "page.txt"
    page.write_text("before")
    if moment == "Uploading the code":
        # Uploading takes a while, so the edit falls after the packing and before the run exists.
        (project_dir / "filler.bin").write_bytes(os.urandom(150 * 1024**2))
    cli = start(dstack_env, project_dir, "run", ".", "-y", "--reload")
    try:
        if moment is not None and not moment.startswith("answering"):
            wait_for(lambda: moment in _stderr(dstack_env), timeout=START_TIMEOUT, what=moment, interval=0.01)
        if moment is not None and moment.startswith("answering"):
            wait_for(lambda: get(port, "/page.txt") is not None, timeout=START_TIMEOUT, what="the task")
            time.sleep(float(moment.partition("+")[2] or 0))
        page.write_text("after, edited")
        wait_for(
            lambda: get(port, "/page.txt") == (200, b"after, edited"),
            timeout=SYNC_TIMEOUT + START_TIMEOUT,
            what=f"the edit made at {moment or 'the start'}",
            interval=0.1,
        )
        assert cli.poll() is None
    finally:
        stop_cli(cli)


def _stderr(env: DstackEnv) -> str:
    path = env.home / "cli.err"
    return path.read_text() if path.exists() else ""
