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
- optional `lost_after(host)`: how long a host may stay silent before its running jobs end `host lost`
  (None: the server's setting);
- optional launch step (below): `needs_launch`, `launch`, `job_agent`, `job_ended`, `release`.
Hosts may come and go while the server runs (fleets applied, deleted): the registry asks `hosts()` again
on every sync and after `refresh`.

Most backends have a standing agent per host that takes a job as soon as it is placed. A backend with a
queue of its own (Slurm) has a launch step first: `needs_launch` is set, and the supervisor calls
`launch` before it talks to an agent — the backend submits the job to its queue, reports while it waits,
and returns once the job's own agent answers (`job_agent`). `job_ended` says how the backend ended a job
itself (a time limit, a cancellation outside dstack), `release` frees what the backend holds for a job
once it is over. Every one of these has a default that keeps a standing-agent backend as it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.backends.agent_client import AgentClient

CAP_CONTAINERS = "containers"
CAP_NVCC = "nvcc"  # the agent found the CUDA compiler (`nvcc: true` tasks need it)
# The backend's own queue decides when and where a placed job starts (Slurm): the scheduler hands every
# job that fits a host's shape over at once and holds nothing for it there.
CAP_QUEUE = "queue"


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
    fleet: str | None = None  # the fleet the host belongs to (fleet backends), and its place there
    fleet_index: int | None = None
    note: str | None = None  # what the backend says about its availability (e.g. Slurm's node counts)
    # Multi-node: hosts with the same `cluster` reach each other, on `address` (a fleet with placement:
    # cluster; a Slurm partition, whose host stands for `node_count` nodes of one shape).
    cluster: str | None = None
    address: str | None = None
    node_count: int = 1


@dataclass(frozen=True)
class LaunchRequest:
    """What a backend with a launch step needs to start one job of a run."""

    job_id: str
    run_name: str
    cpus: float
    memory_gb: float
    gpus: int
    max_duration: int | None  # seconds; None: no limit
    python: str | None = None  # the Python version the task gets (it needs uv on its node), if any
    instance_id: str | None = None  # what an earlier launch of this job recorded (a resubmission finds it)
    # A multi-node run: its node count, this job's rank, and the master job's id, which names the one
    # allocation every node of the run shares (a Slurm job with --nodes N, submitted by the master's launch).
    nodes: int = 1
    node_rank: int = 0
    gang_id: str | None = None


@dataclass(frozen=True)
class Launched:
    """The job's agent answers. `job_overrides` change the job request the supervisor sends it (e.g. the
    GPUs the backend's allocation gave, limits the backend enforces itself)."""

    job_overrides: dict[str, Any] = field(default_factory=dict)
    # Where the job's node is, once the backend knows (a Slurm node): its name, the address the run's
    # other nodes reach it on, and every node's address in rank order (one allocation starts them all).
    hostname: str | None = None
    address: str | None = None
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobEnd:
    """How a job ended, as a backend knows it (its allocation ended before or under the agent)."""

    status: RunStatus
    reason: TerminationReason | None  # None for done
    message: str | None = None
    exit_code: int | None = None


class LaunchFailed(Exception):
    def __init__(self, end: JobEnd) -> None:
        super().__init__(end.message or (end.reason.value if end.reason else end.status.value))
        self.end = end


@dataclass
class LaunchProgress:
    """Callbacks of a launch into the supervisor: `submitted(instance_id, label)` records what the backend
    created (a resubmission must find it; `label` is what `ps -v` shows), `waiting(message)` shows the run
    pending with the backend's reason, `started(message)` shows it provisioning once the job has nodes."""

    submitted: Callable[[str, str], Awaitable[None]]
    waiting: Callable[[str], Awaitable[None]]
    started: Callable[[str], Awaitable[None]]


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

    async def port_socket(self, host_name: str, job_id: str, port: int) -> str | None:
        """A unix socket here that reaches the job's port on its host; None: only through the agent."""
        return None

    def ports_here(self, host_name: str) -> bool:
        """The host's task ports are this machine's own loopback ports: the server connects to them itself
        (a job's declared ports, while it runs) instead of through the agent."""
        return False

    def output_file(self, host_name: str, job_id: str) -> Path | None:
        """The job's output file as its agent writes it, where that is on this machine's disk: the server
        then keeps that very file as its copy (see services/logs.py). None: the output travels."""
        return None

    def lost_after(self, host_name: str) -> float | None:
        """Seconds a host may stay silent before its jobs end `host lost`; None: the server's setting."""
        return None

    # -- optional: a launch step before the job's agent exists (see the module's docstring) --------------

    needs_launch: ClassVar[bool] = False

    async def launch(self, host_name: str, request: LaunchRequest, progress: LaunchProgress) -> Launched:
        """Start the job's allocation and its agent; return once the agent answers. Raises LaunchFailed
        when the job ended before (rejected, cancelled, never startable)."""
        return Launched()

    def job_agent(self, host_name: str, job_id: str) -> AgentClient:
        """The agent that runs `job_id`: the host's own, unless the backend starts one per job."""
        return self.agent(host_name)

    async def job_ended(self, host_name: str, job_id: str) -> JobEnd | None:
        """If the backend itself ended the job (its queue's time limit, a cancellation, a node failure),
        how; None if it knows of no such end."""
        return None

    async def release(self, host_name: str, job_id: str) -> None:
        """The job is over: make sure nothing of it is left with the backend (called before the run is
        recorded as ended)."""
        return None
