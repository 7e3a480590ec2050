"""Pytest fixtures for tests that need real SSH hosts (see sshhosts.py), shared by every test session.

`ssh_hosts` is two hosts for the whole session (host 1: root, one CPU; host 2: root and `ubuntu`, every
CPU), both accepting `client_key`; tests must leave them as they found them (`fleet_hosts` does it for
tests that install agents: it kills what runs there and removes ~/.dstack after the test). A test that
breaks a host (kills its sshd, changes its key, cuts its link) takes its own from `make_ssh_host`, removed
at the end of the test.

`slurm_cluster` is one real Slurm cluster for the session (see slurm.py): tests leave it idle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.netns import NetworkUnavailable, TestNetwork, create_network
from tests.infra.slurm import SlurmCluster, SlurmUnavailable, start_cluster
from tests.infra.sshhosts import ClientKey, SSHHost, make_key, start_host


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"The SSH host tests cannot run in CI: {reason}")
    pytest.skip(f"no test hosts: {reason}")


@pytest.fixture(scope="session")
def test_network() -> Iterator[TestNetwork]:
    try:
        network = create_network()
    except NetworkUnavailable as e:
        _unavailable(str(e))
        raise
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    return make_key(tmp_path_factory.mktemp("ssh-client") / "id_ed25519")


class HostFactory:
    def __init__(self, network: TestNetwork, key: ClientKey) -> None:
        self.network = network
        self.key = key
        self.hosts: list[SSHHost] = []

    def __call__(
        self, *, users: tuple[str, ...] = (), port: int = 22, authorize: bool = True, **options: Any
    ) -> SSHHost:
        """`options`: start_host's (cpus, home_size, python, gpus)."""
        host = start_host(self.network, len(self.network.namespaces) + 1, users=users, port=port, **options)
        self.hosts.append(host)
        if authorize:
            for user in ("root", *users):
                host.authorize(user, self.key)
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.close()


@pytest.fixture(scope="session")
def _session_hosts(test_network: TestNetwork, client_key: ClientKey) -> Iterator[HostFactory]:
    factory = HostFactory(test_network, client_key)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def ssh_hosts(_session_hosts: HostFactory) -> list[SSHHost]:
    return [_session_hosts(cpus="0"), _session_hosts(users=("ubuntu",))]


@pytest.fixture
def fleet_hosts(ssh_hosts: list[SSHHost]) -> Iterator[list[SSHHost]]:
    """The session's two hosts, cleaned after the test: no agent or task left, no ~/.dstack."""
    try:
        yield ssh_hosts
    finally:
        for host in ssh_hosts:
            host.kill_processes()


@pytest.fixture
def make_ssh_host(test_network: TestNetwork, client_key: ClientKey) -> Iterator[Callable[..., SSHHost]]:
    factory = HostFactory(test_network, client_key)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def slurm_cluster(test_network: TestNetwork, client_key: ClientKey) -> Iterator[SlurmCluster]:
    try:
        cluster = start_cluster(test_network, client_key)
    except SlurmUnavailable as e:
        _unavailable(str(e))
        raise
    try:
        yield cluster
    finally:
        cluster.close()


__all__ = ["ClientKey", "HostFactory", "Path", "SSHHost", "SlurmCluster"]
