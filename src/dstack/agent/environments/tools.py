"""Running the agent's helper commands (uv, an interpreter) and capturing their output.

Every child goes through `ChildProcesses.spawn`: the agent reaps orphaned zombies, and a child started any
other way could have its exit status stolen (Popen would then report 0 for a failed command).
"""

from __future__ import annotations

import subprocess
from typing import Dict, List, Optional, Tuple

from dstack.agent.reaper import ChildProcesses

DEFAULT_TIMEOUT_SECONDS = 600.0


class ToolError(Exception):
    """A helper command failed; the message is one sentence with the tool's last line of output."""


def run_tool(
    children: ChildProcesses,
    argv: List[str],
    env: Dict[str, str],
    cwd: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> Tuple[int, str]:
    """Run `argv` to its end; returns its exit code and its merged output (text)."""
    try:
        process = children.spawn(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        return 127, f"{argv[0]}: {e.strerror or e}"
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        children.release(process.pid)
        return 124, f"{argv[0]} did not finish within {timeout:g} s"
    children.release(process.pid)
    return process.returncode, output.decode("utf-8", errors="replace")


def last_line(output: str) -> str:
    """The most telling line of a tool's output: its last non-empty one, without uv's `error:` prefix."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "no output"
    errors = [line for line in lines if line.lower().startswith("error:")]
    line = errors[-1] if errors else lines[-1]
    return line[len("error:") :].strip() if line.lower().startswith("error:") else line
