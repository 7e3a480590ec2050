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


class Terminal:
    """The real `dstack` command on a pseudo-terminal: what a user at a keyboard sees and types."""

    def __init__(self, env: DstackEnv, *args: str, cwd: Path | None = None) -> None:
        import pty

        self.output = b""
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec dstack with the pty as its controlling terminal
            try:
                os.chdir(cwd or env.home)
                os.execve(DSTACK, [DSTACK, *args], {**env.env, "TERM": "xterm"})
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.exit_code: int | None = None

    def expect(self, text: str, timeout: float = 60) -> None:
        import select

        needle = text.encode()
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; the terminal shows:\n{self.text}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the command ended before printing {text!r}:\n{self.text}")
                self.output += chunk

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def interrupt(self) -> None:
        self.type("\x03")  # Ctrl+C: the terminal sends SIGINT to the foreground process group

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._drain()
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                self._drain()
                return self.exit_code
            time.sleep(0.05)
        raise AssertionError(f"the command did not exit within {timeout} s:\n{self.text}")

    def _drain(self) -> None:
        import select

        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
