"""A private network for test hosts: one bridge in the root namespace, one network namespace per host.

Everything is named with a per-network random suffix, so test sessions running at the same time on one
machine never touch each other's namespaces, links or firewall rules, and everything is removed at the end.

Addresses come from 10.250.0.0/16, one /24 per network, chosen under a lock so two sessions never take the
same one. A permanent `unreachable 10.250.0.0/16` route in the root namespace is the safety net: an address
that no test network holds can never fall through to the machine's default route.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUPERNET = "10.250.0.0/16"
_LOCK = Path("/run/dstack-tests/netns.lock")


class NetworkUnavailable(Exception):
    """This machine cannot make test networks (not root, no iproute2, no netns support)."""


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Namespace:
    name: str  # the netns name under /run/netns
    address: str  # its eth0 address on the bridge
    veth: str  # the root-namespace end of its link

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def cut(self) -> None:
        """Take its link down: the host is alive but nothing reaches it (a network failure)."""
        sh("ip", "link", "set", self.veth, "down")

    def restore(self) -> None:
        sh("ip", "link", "set", self.veth, "up")


@dataclass
class TestNetwork:
    suffix: str
    subnet: int  # the third octet: 10.250.<subnet>.0/24
    bridge: str
    namespaces: list[Namespace] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (where the server is, seen from a host)."""
        return f"10.250.{self.subnet}.1"

    def add_namespace(self) -> Namespace:
        index = len(self.namespaces) + 1
        name = f"ds-{self.suffix}-{index}"
        veth = f"dsv{self.suffix}{index}"
        address = f"10.250.{self.subnet}.{10 + index}"
        sh("ip", "netns", "add", name)
        ns = Namespace(name=name, address=address, veth=veth)
        self.namespaces.append(ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", veth, "master", self.bridge)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return ns

    def close(self) -> None:
        for ns in self.namespaces:
            sh("ip", "link", "del", ns.veth, check=False)
            sh("ip", "netns", "del", ns.name, check=False)
        _forward_rule("-D", self.bridge)
        sh("ip", "link", "del", self.bridge, check=False)


def _forward_rule(action: str, bridge: str) -> None:
    # Hosts on the bridge must reach each other (multi-node); the FORWARD policy may be DROP with
    # br_netfilter on. Only this bridge's own traffic is allowed, and the rule goes with the bridge.
    if action == "-D":
        while (
            sh(
                "iptables", "-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT", check=False
            ).returncode
            == 0
        ):
            pass
        return
    sh("iptables", "-I", "FORWARD", "1", "-i", bridge, "-o", bridge, "-j", "ACCEPT", check=False)


def _check_possible() -> None:
    if os.geteuid() != 0:
        raise NetworkUnavailable("test hosts need root (network namespaces)")
    try:
        sh("ip", "netns", "list")
    except (OSError, RuntimeError) as e:
        raise NetworkUnavailable(f"iproute2 cannot list network namespaces: {e}") from e


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    _LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _subnets_in_use() -> set[int]:
    used = set()
    for line in sh("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        for word in line.split():
            if word.startswith("10.250."):
                used.add(int(word.split(".")[2]))
    return used


def create_network() -> TestNetwork:
    _check_possible()
    if SUPERNET not in sh("ip", "route", "show", "type", "unreachable").stdout:
        sh("ip", "route", "add", "unreachable", SUPERNET, check=False)
    with _allocation_lock():
        free = sorted(set(range(1, 255)) - _subnets_in_use())
        if not free:
            raise NetworkUnavailable(f"every /24 of {SUPERNET} is in use by other test networks")
        suffix = secrets.token_hex(3)
        network = TestNetwork(suffix=suffix, subnet=free[0], bridge=f"dsb{suffix}")
        sh("ip", "link", "add", network.bridge, "type", "bridge")
        try:
            sh("ip", "addr", "add", f"{network.gateway}/24", "dev", network.bridge)
            sh("ip", "link", "set", network.bridge, "up")
            _forward_rule("-I", network.bridge)
        except Exception:
            network.close()
            raise
    return network
