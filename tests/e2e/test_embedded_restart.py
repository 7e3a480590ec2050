"""An attached `dstack run` whose embedded server dies (issue 13, item 3): the CLI starts it again, as
`dstack ps` would, and the output arrives complete, every line once and in order."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.test_run import task

pytestmark = pytest.mark.e2e

LINES = 40


def test_an_attached_run_restarts_the_killed_embedded_server_and_loses_no_output(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    task(project_dir, [f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.25; done"])
    cli = dstack_env.popen("run", ".", "-y", cwd=project_dir)
    try:
        first = wait_for(dstack_env.server_pid, timeout=120, what="the embedded server")
        assert cli.stdout is not None
        seen = [cli.stdout.readline() for _ in range(3)]  # the task runs and its output streams
        assert seen == ["line 1\n", "line 2\n", "line 3\n"]
        os.kill(first, signal.SIGKILL)
        rest, stderr = cli.communicate(timeout=180)
    finally:
        if cli.poll() is None:
            cli.kill()
    output = "".join(seen) + rest
    assert cli.returncode == 0, stderr
    assert output == "".join(f"line {i}\n" for i in range(1, LINES + 1)), output
    assert "Restarted a dstack server in the background" in stderr, stderr
    assert "could not reconnect" not in stderr
    second = dstack_env.server_pid()
    assert second is not None and second != first
