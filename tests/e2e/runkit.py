"""Helpers for end-to-end tests that look at runs: files, the API client of the CLI's server, statuses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dstack.api.client import Client
from dstack.api.config import load_config
from tests.e2e.harness import DstackEnv


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def declare_gpus(env: DstackEnv, spec: str = "H100:80GB:2") -> None:
    """Before the first command starts the embedded server: the GPUs it will offer."""
    write(
        env.home / ".dstack" / "server" / "config.yml",
        f"backends:\n  - type: local\n    resources:\n      gpus: {spec}\n",
    )


def api_client(env: DstackEnv) -> Client:
    """The Python API client, pointed at the server the CLI started (from the config in the test's HOME)."""
    entry = load_config(env.home / ".dstack" / "config.yml").default("main")
    assert entry is not None
    return Client(entry.url, entry.token, entry.name)


def run_json(env: DstackEnv, name: str) -> dict[str, Any]:
    client = api_client(env)
    try:
        return client.get_run(name)
    finally:
        client.close()


def status(env: DstackEnv, name: str) -> str:
    return str(run_json(env, name)["status"])


def stamp(env: DstackEnv, name: str, label: str) -> float:
    """The time a task printed as `LABEL=<unix time>`."""
    logs = env.run("logs", name, check=True).stdout
    match = re.search(rf"{label}=(\d+\.\d+)", logs)
    assert match, logs
    return float(match.group(1))
