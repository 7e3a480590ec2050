"""Driving the real `dstack` command in an isolated HOME, and cleaning up every process it started.

Each `DstackEnv` has its own HOME, so its embedded server, agent, database and caches are its own. At the
end, every process whose environment carries that HOME is killed: the server, the agent and any task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
DSTACK = str(BIN / "dstack")


class DstackEnv:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "HOME": str(home),
            "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
            "UV_PYTHON_DOWNLOADS": "never",
            "PYENV_ROOT": os.environ.get("PYENV_ROOT", "/root/.pyenv"),
        }

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        input: str | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DSTACK, *args],
            cwd=cwd or self.home,
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"dstack {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str, cwd: Path | None = None, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [DSTACK, *args],
            cwd=cwd or self.home,
            text=True,
            env=self.env,
            stdout=kwargs.pop("stdout", subprocess.PIPE),
            stderr=kwargs.pop("stderr", subprocess.PIPE),
            stdin=kwargs.pop("stdin", subprocess.DEVNULL),
            **kwargs,
        )

    def processes(self) -> list[int]:
        """PIDs of processes started under this HOME (server, agent, tasks)."""
        return pids_with_env(f"HOME={self.home}")

    def server_pid(self) -> int | None:
        import json

        try:
            return int(json.loads((self.home / ".dstack" / "server" / "server.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def cleanup(self) -> None:
        kill_all(self.processes())


def pids_with_env(marker: str) -> list[int]:
    needle = marker.encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ or environ.endswith(needle[:-1]):
            found.append(int(entry))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=10, what="processes to die")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
