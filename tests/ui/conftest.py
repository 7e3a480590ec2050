"""Fixtures of the web UI's tests: a server with its UI, and a real headless Chromium."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import conftest as e2e
from tests.e2e.harness import DstackEnv
from tests.ui.browser import Browser
from tests.ui.kit import Server, start_server

_ARTIFACTS: list[Path] = []
dstack_env = e2e.dstack_env  # the e2e tests' throw-away HOME, whose processes are killed at the end


def artifacts_root() -> Path:
    """Where screenshots go: $DSTACK_TEST_ARTIFACTS, else a folder under the system's temp dir."""
    if not _ARTIFACTS:
        env = os.environ.get("DSTACK_TEST_ARTIFACTS")
        root = Path(env) / "ui" if env else Path(tempfile.gettempdir()) / f"dstack-ui-artifacts-{os.getpid()}"
        root.mkdir(parents=True, exist_ok=True)
        _ARTIFACTS.append(root)
    return _ARTIFACTS[0]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _ARTIFACTS:
        terminalreporter.write_line(f"web UI screenshots: {_ARTIFACTS[0]}")


@pytest.fixture
def server(dstack_env: DstackEnv) -> Iterator[Server]:
    running = start_server(dstack_env)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    opened = Browser(artifacts_root() / request.node.name)
    try:
        yield opened
    finally:
        opened.quit()
