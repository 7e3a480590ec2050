"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest

# Real SSH hosts in network namespaces (tests/infra): ssh_hosts, make_ssh_host, client_key, test_network.
pytest_plugins = ["tests.infra.fixtures"]


@pytest.fixture(autouse=True, scope="session")
def _no_interpreter_downloads() -> None:
    # uv must never fetch a Python from the internet in tests: only the machine's interpreters are used.
    os.environ["UV_PYTHON_DOWNLOADS"] = "never"
