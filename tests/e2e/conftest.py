from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv


@pytest.fixture
def dstack_env(tmp_path: Path) -> Iterator[DstackEnv]:
    env = DstackEnv(tmp_path / "home")
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def project_dir(dstack_env: DstackEnv) -> Path:
    path = dstack_env.home / "project"
    path.mkdir()
    return path
