from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import AgentClient, AgentProcess


def _assert_clean_log(agent: AgentProcess) -> None:
    log = agent.log()
    assert "Traceback" not in log and "Unexpected error" not in log, log


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent for a whole test module (starting one costs a Python start-up)."""
    agent = AgentProcess(tmp_path_factory.mktemp("agent") / "work").wait_ready()
    yield agent
    assert agent.terminate() == 0, agent.log()
    _assert_clean_log(agent)


@pytest.fixture
def client(shared_agent: AgentProcess) -> Iterator[AgentClient]:
    agent_client = shared_agent.client()
    yield agent_client
    agent_client.close()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents for this test alone, stopped at its end: start_agent(work_dir=None, **kwargs)."""
    started: list[AgentProcess] = []

    def start(work_dir: Path | None = None, wait: bool = True, **kwargs: Any) -> AgentProcess:
        agent = AgentProcess(work_dir or tmp_path / "work", **kwargs)
        started.append(agent)
        return agent.wait_ready() if wait else agent

    yield start
    for agent in started:
        agent.terminate()
