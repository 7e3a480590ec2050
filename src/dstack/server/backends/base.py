"""The backend protocol: where jobs can run. One module per backend implements it.

A backend owns a set of hosts, each with an agent; the server learns their resources from the agents'
fingerprints and reaches them only through `AgentClient`. Optional abilities are declared in
`capabilities` so a plan can say why a backend does not fit a task, instead of failing later.

The protocol (what a new backend implements; the optional hooks have defaults):
- `start()` / `close()`: bring the backend up at server start (never blocking on a host that does not
  answer) / let go of connections (jobs keep running on their hosts);
- `hosts()`: the hosts offered now, from what the backend knows (cheap: called for every plan and
  scheduling pass, at most every few seconds); a host that does not answer is listed with
  `available=False` and why, so plans can say so;
- `agent(host)`: the client of the host's agent (raises AgentUnreachable when there is none now);
- `recover(host)`: the agent stopped answering; bring it back (reconnect, restart it: a restarted agent
  takes its jobs over). True if it answers again;
- optional `port_socket(host, job_id, port)`: a unix socket on this machine that reaches the job's port
  directly (a fleet host's: the SSH connection's own forward), which a CLI on this machine, running as
  the server's user, may use instead of relaying through the server (the port then moves as fast as
  `ssh -L`); None where there is none (the default);
- optional `prepare_job(host, job_id)`: before a placed job is handed to the host's agent, e.g. a Slurm
  backend submits the batch job that starts the agent; `job_ended(host, job_id)`: after the job's end
  was recorded (free what `prepare_job` took); `lost_after(host)`: how long a host may stay silent before
  its running jobs end `host lost` (None: the server's setting).
Hosts may come and go while the server runs (fleets applied, deleted): the registry asks `hosts()` again
on every sync and after `refresh`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dstack.server.backends.agent_client import AgentClient

CAP_CONTAINERS = "containers"


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
    project_id: str | None = None  # None: offered to every project (local); a fleet's host: its project's
    status: str | None = None  # what the hosts table says (ready, unreachable, failed...); None: derived


class Backend(ABC):
    type: ClassVar[str]
    # Set by the server: call it when a host that did not answer answers again (the reconciler then stops
    # what the host still runs of jobs that ended meanwhile).
    on_host_back: Callable[[], None] | None = None
    # Set by the registry: call it when what `hosts()` would say changed (a host became unreachable...).
    on_hosts_changed: Callable[[], None] | None = None

    def host_back(self) -> None:
        if self.on_host_back is not None:
            self.on_host_back()

    def hosts_changed(self) -> None:
        if self.on_hosts_changed is not None:
            self.on_hosts_changed()

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

    async def prepare_job(self, host_name: str, job_id: str) -> None:  # noqa: B027 - optional hook
        """Before the job is handed to the host's agent (nothing to do for hosts with a running agent)."""

    async def job_ended(self, host_name: str, job_id: str) -> None:  # noqa: B027 - optional hook
        """After the job's end was recorded."""

    async def port_socket(self, host_name: str, job_id: str, port: int) -> str | None:
        """A unix socket here that reaches the job's port on its host; None: only through the agent."""
        return None

    def lost_after(self, host_name: str) -> float | None:
        """Seconds a host may stay silent before its jobs end `host lost`; None: the server's setting."""
        return None
