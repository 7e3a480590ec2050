"""The backend protocol: where jobs can run. One module per backend implements it.

A backend owns a set of hosts, each with an agent; the server learns their resources from the agents'
fingerprints and reaches them only through `AgentClient`. Optional abilities are declared in
`capabilities` so a plan can say why a backend does not fit a task, instead of failing later.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dstack.server.backends.agent_client import AgentClient

CAP_CONTAINERS = "containers"
CAP_NVCC = "nvcc"  # the agent found the CUDA compiler (`nvcc: true` tasks need it)


@dataclass
class HostInfo:
    """What the scheduler knows of one host: its fingerprint (from the agent) and what it costs."""

    backend: str
    name: str
    resources: dict[str, Any]  # cpus, arch, memory_bytes, disk_free_bytes, gpus: [...]
    price: float = 0.0
    region: str = "local"
    available: bool = True
    unavailable_reason: str | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)
    fleet: str | None = None  # the fleet the host belongs to (fleet backends), and its place there
    fleet_index: int | None = None


class Backend(ABC):
    type: ClassVar[str]

    @abstractmethod
    async def start(self) -> None:
        """Bring the backend's hosts and agents up (called once at server start)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; running jobs keep running on their hosts."""

    @abstractmethod
    async def hosts(self) -> list[HostInfo]:
        """The hosts this backend offers now, freshly fingerprinted where cheap."""

    @abstractmethod
    def agent(self, host_name: str) -> AgentClient:
        """The client of the agent on that host."""

    @abstractmethod
    async def recover(self, host_name: str) -> bool:
        """The host's agent stopped answering: try to bring it back. True if it answers again."""
