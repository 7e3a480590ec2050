"""Helpers for the fleet tests: fleet files for test hosts, applying them, runs and their hosts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.harness import DstackEnv, wait_for
from tests.infra.sshhosts import ClientKey, SSHHost

FLEET = "my-boxes"


def write_fleet(
    folder: Path,
    hosts: list[SSHHost],
    key: ClientKey,
    *,
    name: str = FLEET,
    users: dict[int, str] | None = None,
    file: str = "fleet.dstack.yml",
    placement: str | None = None,
) -> Path:
    """A fleet of `hosts`; `users` gives a host (by index) another login than root; `placement: cluster`
    says its hosts reach each other (multi-node runs)."""
    lines = ["type: fleet", f"name: {name}"] + ([f"placement: {placement}"] if placement else [])
    lines += ["ssh_config:", "  user: root", f"  identity_file: {key.path}"]
    lines.append("  hosts:")
    for index, host in enumerate(hosts):
        user = (users or {}).get(index)
        if user is None and host.port == 22:
            lines.append(f"    - {host.address}")
        else:
            lines.append(f"    - hostname: {host.address}")
            if host.port != 22:
                lines.append(f"      port: {host.port}")
            if user is not None:
                lines.append(f"      user: {user}")
    path = folder / file
    path.write_text("\n".join(lines) + "\n")
    return path


def apply(env: DstackEnv, path: Path, *args: str, timeout: float = 300) -> Any:
    return env.run("apply", "-f", str(path), "-y", *args, cwd=path.parent, timeout=timeout)


def task(project: Path, commands: list[str], extra: str = "", name: str = ".dstack.yml") -> Path:
    body = "type: task\n" + extra + "commands:\n" + "".join(f"  - {json.dumps(c)}\n" for c in commands)
    path = project / name
    path.write_text(body)
    return path


def run_status(env: DstackEnv, name: str) -> dict[str, Any]:
    """The run as `dstack ps -a -v` shows it: {status, error} (parsed from its row)."""
    result = env.run("ps", "-a", "-v", check=True)
    for line in result.stdout.splitlines():
        words = line.split()
        if words and words[0] == name:
            return {"line": line, "status": _status_of(line)}
    raise AssertionError(f"run {name} is not in dstack ps:\n{result.stdout}")


def _status_of(line: str) -> str:
    for status in ("pending", "provisioning", "pulling", "running", "terminating", "done", "failed",
                   "terminated", "aborted", "submitted"):  # fmt: skip
        if f" {status}" in line:
            return status
    return "?"


def wait_status(env: DstackEnv, name: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(run_status(env, name))
        return found["status"] in statuses

    wait_for(reached, timeout=timeout, what=f"run {name} to be {'/'.join(statuses)}", interval=0.3)
    return found


def logs(env: DstackEnv, name: str) -> str:
    return env.run("logs", name, check=True).stdout


def wait_logs(env: DstackEnv, name: str, text: str, timeout: float = 120) -> str:
    found = {"out": ""}

    def seen() -> bool:
        found["out"] = env.run("logs", name).stdout
        return text in found["out"]

    wait_for(seen, timeout=timeout, what=f"{text!r} in the output of {name}", interval=0.3)
    return found["out"]


def numbered(count: int, every: float) -> str:
    """A command printing `count` numbered lines, one every `every` seconds."""
    return f"for i in $(seq 1 {count}); do echo line $i; sleep {every}; done"


def assert_numbered(output: str, count: int) -> None:
    lines = [line for line in output.splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(1, count + 1)], output[-2000:]
