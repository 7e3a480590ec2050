"""Helpers for the port tests: an attached `dstack` process whose output is read as it comes, free ports,
the test app in a project folder."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.e2e.harness import DstackEnv

APP = Path(__file__).with_name("port_app.py")
URL_LINE = re.compile(r"Port (\d+) is up at (http://127\.0\.0\.1:(\d+))")


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick, so it is unlikely to be taken meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_project(project: Path, ports: list[str | int], app_args: str) -> None:
    shutil.copy(APP, project / "port_app.py")
    lines = ["type: task", "ports:"] + [f"  - {p!r}" if isinstance(p, str) else f"  - {p}" for p in ports]
    # The app needs `websockets`; the task's own venv has only what it installs (tests install nothing from
    # the network), so the app runs on the interpreter of dstack's own venv.
    lines += ["commands:", f"  - {sys.executable} port_app.py {app_args}"]
    (project / ".dstack.yml").write_text("\n".join(lines) + "\n")


class Attached:
    """A running `dstack run`/`dstack attach`; its stdout and stderr lines are collected as they come."""

    def __init__(self, env: DstackEnv, *args: str, cwd: Path | None = None) -> None:
        self.process = env.popen(*args, cwd=cwd, stdin=subprocess.PIPE)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.line_times: dict[str, float] = {}  # when each line (first) arrived, time.time()
        self._changed = threading.Condition()
        self._open_streams = 2
        for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    def _read(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.line_times.setdefault(line.rstrip("\n"), time.time())
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._open_streams -= 1
            self._changed.notify_all()

    def wait_for(self, pattern: str, *, stream: str = "stderr", timeout: float = 120) -> re.Match[str]:
        """The first line matching `pattern` (a regex), waiting for it to come."""
        lines = self.stderr if stream == "stderr" else self.stdout
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in lines:
                    match = compiled.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._open_streams:
                    raise AssertionError(
                        f"no line matching {pattern!r} on {stream}; stdout={self.stdout[-20:]} "
                        f"stderr={self.stderr[-20:]} rc={self.process.poll()}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def url_for(self, port: int, timeout: float = 120) -> str:
        """The URL the CLI printed for task port `port` once it answered."""
        return self.wait_for(rf"Port {port} is up at (http://127\.0\.0\.1:\d+)", timeout=timeout).group(1)

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.1)  # let the reader threads take the last lines
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
