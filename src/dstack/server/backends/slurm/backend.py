"""The `slurm` backend: a cluster's partitions as offers, each run one Slurm job, the task run by an agent
that the job itself starts on its node.

- Offers: one per partition and node shape (inventory.py), refreshed with the registry's host sync; a
  cluster that cannot be asked keeps its last shapes, unavailable with the reason (or one placeholder).
- Launch (the optional step of the Backend protocol): sbatch with the run's resources (script.py), then
  Slurm's queue is the waiting room — the run shows Slurm's pending reason — until the job runs and its
  agent publishes its address through the job's Comment; the server reaches it through a forward of its
  SSH connection to the login node, with a token derived for this one job (HMAC of a server secret and
  the job id, so nothing needs storing and the admin token never leaves the server).
- Ends: the agent (--one-job) exits once the server collected the job, which ends the Slurm job;
  `release` waits for that (scancel if it lingers, or if the job never got an agent), and a job Slurm
  ended itself (time limit, scancel by the user, node failure, preemption) ends the run with that reason
  (`job_ended`). A cancellation that cannot reach the cluster is kept in `orphans.json` and repeated when
  the login node answers again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.backends.agent_client import AgentClient, AgentError, AgentUnreachable
from dstack.server.backends.base import (
    CAP_CONTAINERS,
    CAP_QUEUE,
    Backend,
    HostInfo,
    JobEnd,
    Launched,
    LaunchFailed,
    LaunchProgress,
    LaunchRequest,
)
from dstack.server.backends.slurm import script
from dstack.server.backends.slurm.cluster import SlurmCluster, SlurmError, SlurmRejected
from dstack.server.backends.slurm.inventory import Shape, shapes
from dstack.server.backends.slurm.states import JobInfo, NodeAgent, never_starts, outcome, pending_message
from dstack.server.backends.slurm.stored import Orphans, load_shapes, read_or_create_secret, save_shapes
from dstack.server.config_file import SlurmBackendConfig
from dstack.server.remote.artifact import agent_zipapp
from dstack.server.ssh import SSHError, SSHPool

log = logging.getLogger(__name__)

AGENT_START_TIMEOUT = 120.0  # seconds from the job's start to its agent's address in the Comment
UNREACHABLE_GRACE = 60.0  # seconds a launch waits for a login node that stopped answering
RELEASE_WAIT = 20.0  # seconds `release` waits for the job to leave Slurm's queue
# How long a listing of offers waits for a cluster; a slower one goes on in the background and the offers
# show what was known (an unreachable login node must not hold up every plan for its connect timeout).
INVENTORY_WAIT = 3.0
ORPHAN_RETRY = 15.0  # seconds between attempts to cancel Slurm jobs of runs that ended while away
UV_ON_LOGIN = ".dstack/slurm/bin"  # under the login user's home


@dataclass
class _Job:
    cluster: SlurmCluster
    slurm_id: str
    client: AgentClient | None = None
    forward: tuple[str, int] | None = None
    gang: str = ""  # the master job's id: the Slurm job's tag and its agents' token (every node's)


class SlurmBackend(Backend):
    type = "slurm"
    needs_launch = True

    def __init__(self, config: SlurmBackendConfig, pool: SSHPool, state_dir: Path) -> None:
        self.clusters = {c.name: SlurmCluster(c, pool) for c in config.clusters}
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir = state_dir
        self._secret = read_or_create_secret(state_dir / "secret")
        # Every shape listed, by offer name, kept across restarts: a job placed on one is found again even
        # while its cluster does not answer.
        self._shapes_file = state_dir / "shapes.json"
        self._shapes: dict[str, Shape] = load_shapes(self._shapes_file)
        self._listed: dict[str, list[HostInfo]] = {}  # per cluster: its offers as last listed
        self._listing: dict[str, asyncio.Task[list[HostInfo]]] = {}
        self._jobs: dict[str, _Job] = {}  # dstack job id -> its Slurm job and agent
        self._orphans = Orphans(state_dir / "orphans.json")
        self._orphan_task: asyncio.Task[None] | None = None
        self._agent_b64: str | None = None
        self._uv: tuple[Path, str] | None = None
        self._shipping: dict[str, asyncio.Task[None]] = {}  # Slurm job id -> uv on its way to its nodes

    async def start(self) -> None:
        # Clusters are asked lazily (hosts()), so an unreachable one never holds up a start.
        self._retry_orphans()  # what an earlier server could not cancel

    async def close(self) -> None:
        for task in [*self._listing.values(), self._orphan_task]:
            if task is not None:
                task.cancel()
        for job in self._jobs.values():
            if job.client is not None:
                await job.client.close()
        for cluster in self.clusters.values():
            await cluster.watcher.close()

    # -- offers ------------------------------------------------------------------------------------------

    async def hosts(self) -> list[HostInfo]:
        found = await asyncio.gather(*(self._cluster_hosts(c) for c in self.clusters.values()))
        return [info for infos in found for info in infos]

    async def _cluster_hosts(self, cluster: SlurmCluster) -> list[HostInfo]:
        task = self._listing.get(cluster.name)
        if task is not None and task.done():
            self._listed[cluster.name] = task.result()
            task = None
        if task is None:
            task = self._listing[cluster.name] = asyncio.create_task(self._inventory(cluster))
        done, _ = await asyncio.wait({task}, timeout=INVENTORY_WAIT)
        if task in done:
            self._listed[cluster.name] = task.result()
            del self._listing[cluster.name]
        found = self._listed.get(cluster.name)
        if found is not None:
            return found
        target = cluster.target
        reason = (
            f"Slurm cluster {cluster.name}: {target.hostname}:{target.port} did not answer within "
            f"{INVENTORY_WAIT:.0f} s"
        )
        return [self._placeholder(cluster, cluster.name, reason)]

    async def _inventory(self, cluster: SlurmCluster) -> list[HostInfo]:
        try:
            partitions, nodes = await cluster.inventory()
        except SlurmError as e:
            known = [s for s in self._shapes.values() if s.cluster == cluster.name]
            if known:
                return [self._host(s, unavailable=e.message) for s in known]
            return [self._placeholder(cluster, cluster.name, e.message)]
        await self._cancel_orphans(cluster)
        listed, missing = shapes(cluster.config, partitions, nodes)
        current = {s.name for s in listed}
        infos = []
        new = [s.name for s in listed if s.name not in self._shapes]
        for shape in listed:
            self._shapes[shape.name] = shape
            infos.append(self._host(shape))
        if new:
            save_shapes(self._shapes_file, self._shapes)
        for shape in self._shapes.values():
            # A shape that went away (nodes reconfigured) stays listed, unavailable, while jobs may use it.
            if shape.cluster == cluster.name and shape.name not in current:
                infos.append(self._host(shape, unavailable="no node of this shape is in the partition now"))
        names = ", ".join(p.name for p in partitions) or "none"
        for partition in missing:
            reason = f"Slurm cluster {cluster.name} has no partition {partition} (its partitions: {names})"
            infos.append(self._placeholder(cluster, f"{cluster.name}/{partition}", reason))
        return infos

    def _host(self, shape: Shape, unavailable: str | None = None) -> HostInfo:
        cluster = self.clusters[shape.cluster]
        reason = unavailable or shape.unavailable_reason
        return HostInfo(
            backend=self.type,
            name=shape.name,
            resources=shape.resources(),
            region=shape.cluster,
            available=reason is None,
            unavailable_reason=reason,
            capabilities=self._capabilities(cluster),
            note=shape.note,
            # The nodes of one partition take a multi-node run as one job (--nodes N).
            cluster=f"slurm:{shape.cluster}/{shape.partition}",
            node_count=shape.usable,
        )

    def _placeholder(self, cluster: SlurmCluster, name: str, reason: str) -> HostInfo:
        return HostInfo(
            backend=self.type,
            name=name,
            resources={"cpus": 0, "memory_bytes": 0},
            region=cluster.name,
            available=False,
            unavailable_reason=reason,
            capabilities=self._capabilities(cluster),
        )

    @staticmethod
    def _capabilities(cluster: SlurmCluster) -> frozenset[str]:
        caps = {CAP_QUEUE}
        if cluster.config.container_runtime:
            caps.add(CAP_CONTAINERS)
        return frozenset(caps)

    # -- agents ------------------------------------------------------------------------------------------

    def agent(self, host_name: str) -> AgentClient:
        raise AgentUnreachable("A Slurm partition has no standing agent: each job starts its own")

    def job_agent(self, host_name: str, job_id: str) -> AgentClient:
        job = self._jobs.get(job_id)
        if job is None or job.client is None:
            raise AgentUnreachable(f"The agent of job {job_id} has not started in its Slurm job yet")
        return job.client

    async def recover(self, host_name: str) -> bool:
        cluster = self._cluster_of(host_name)
        try:
            await cluster.run(["true"], timeout=20)
        except SlurmError:
            return False
        return True

    # -- launch ------------------------------------------------------------------------------------------

    async def launch(self, host_name: str, request: LaunchRequest, progress: LaunchProgress) -> Launched:
        cluster = self._cluster_of(host_name)
        shape = self._shapes.get(host_name)
        if shape is None:
            raise LaunchFailed(
                _failed(f"failed to start: {host_name} is not a node shape of cluster {cluster.name}")
            )
        gang = request.gang_id or request.job_id
        if request.node_rank == 0:
            slurm_id = await self._submitted(cluster, shape, request)
        else:  # the master's launch submits the one Slurm job every node of the run shares
            slurm_id = await self._shared(cluster, gang, request)
        job = self._jobs.setdefault(request.job_id, _Job(cluster, slurm_id, gang=gang))
        await progress.submitted(slurm_id, f"slurm job {slurm_id}")
        delay, shown, running_since, unreachable_since = 0.1, None, None, None
        while True:
            try:
                info = await self._state(cluster, slurm_id)
                unreachable_since = None
            except SlurmError as e:
                unreachable_since = _check_grace(e, unreachable_since)
                await asyncio.sleep(1.0)
                continue
            if info.error:
                await self._cancel(cluster, slurm_id)
                raise LaunchFailed(_failed(f"failed to start: {info.error}"))
            if info.phase == "ended":
                raise LaunchFailed(outcome(info))
            if info.phase == "pending":
                never = never_starts(info)
                if never is not None:
                    await self._cancel(cluster, slurm_id)
                    raise LaunchFailed(JobEnd(RunStatus.FAILED, TerminationReason.NO_CAPACITY, never))
                message = pending_message(info)
                if message != shown:
                    await progress.waiting(message)
                    shown = message
            else:
                if running_since is None:
                    running_since = time.monotonic()
                    await progress.submitted(slurm_id, f"slurm job {slurm_id} on {info.nodes}")
                    await progress.started(f"Slurm job {slurm_id} started on {info.nodes}")
                agents = info.node_agents
                if len(agents) > request.node_rank:
                    launched = await self._connect(job, info, request, shape, agents)
                    if launched is not None:
                        return launched
                elif time.monotonic() - running_since > AGENT_START_TIMEOUT:
                    await self._cancel(cluster, slurm_id)
                    raise LaunchFailed(
                        _failed(
                            f"failed to start: the dstack agent did not start on {info.nodes} within "
                            f"{AGENT_START_TIMEOUT:.0f} s of Slurm job {slurm_id} starting"
                        )
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    async def _submitted(self, cluster: SlurmCluster, shape: Shape, request: LaunchRequest) -> str:
        """The job's Slurm job id: the recorded one, one a crash kept us from recording, or a new one."""
        if request.instance_id:
            return request.instance_id
        since = None
        while True:
            try:
                found = await cluster.find(script.tag(request.job_id))
                if found is not None:
                    return found
                text = script.batch_script(
                    job_id=request.job_id,
                    run_name=request.run_name,
                    token=self._token(request.job_id),
                    agent_b64=await self._agent_payload(),
                    uv_sha=(await self._uv_binary(shape))[1] if request.python else "",
                    nodes=request.nodes,
                )
                return await cluster.submit(script.sbatch_command(request, shape), text)
            except SlurmRejected as e:
                raise LaunchFailed(_failed(f"failed to start: {e.message}")) from e
            except SlurmError as e:
                since = _check_grace(e, since)
                await asyncio.sleep(1.0)

    async def _shared(self, cluster: SlurmCluster, gang: str, request: LaunchRequest) -> str:
        """A worker node's Slurm job: its master's, once the master's launch has submitted it."""
        if request.instance_id:
            return request.instance_id
        since = None
        while True:
            known = next((j.slurm_id for j in self._jobs.values() if j.gang == gang), None)
            try:
                found = known or await cluster.find(script.tag(gang))
                since = None
            except SlurmError as e:
                since = _check_grace(e, since)
                found = None
            if found is not None:
                return found
            await asyncio.sleep(0.5)

    async def _state(self, cluster: SlurmCluster, slurm_id: str) -> JobInfo:
        info = await cluster.watcher.get(slurm_id)
        if info is not None and info.phase != "ended" and info.state != "COMPLETING":
            return info
        # Ending, or no longer in squeue: scontrol tells the base state (CANCELLED, TIMEOUT, ...).
        exact = await cluster.job(slurm_id)
        if exact is not None:
            return exact.settled()
        if info is not None:
            return info
        return JobInfo(slurm_id, "REVOKED", "the cluster no longer knows the job", "", "")

    async def _connect(
        self, job: _Job, info: JobInfo, request: LaunchRequest, shape: Shape, agents: list[NodeAgent]
    ) -> Launched | None:
        node = agents[request.node_rank]
        address, port = node.address, node.port
        cluster = job.cluster
        try:
            path = await cluster.connection.forward(address, port)
        except SSHError as e:
            log.warning("slurm job %s: no forward to its agent yet: %s", job.slurm_id, e.message)
            return None
        if job.client is None or job.forward != (address, port):
            if job.client is not None:
                await job.client.close()
            job.client = AgentClient(f"http://{address}:{port}", self._token(job.gang), socket_path=str(path))
            job.forward = (address, port)
        try:
            # Authenticated: the agent at that address is this job's. A job it already has was handed
            # over before a server restart, and needs nothing shipped.
            handed_over = bool(await job.client.list_jobs())
        except AgentUnreachable:
            return None
        except AgentError as e:
            await self._cancel(cluster, job.slurm_id)
            raise LaunchFailed(_failed(f"failed to start: the agent of Slurm job {job.slurm_id}: {e}")) from e
        if request.python and not info.has_uv and info.work_dir and not handed_over:
            # One copy for every node (sbcast), which each node's job waits for.
            shipping = self._shipping.get(job.slurm_id)
            if shipping is None:
                shipping = self._shipping[job.slurm_id] = asyncio.create_task(
                    self._ship_uv(cluster, job.slurm_id, info.work_dir, shape)
                )
            await asyncio.shield(shipping)
        return Launched(
            job_overrides={
                "max_duration": None,  # Slurm's --time ends the job; its reason says so
                # Slurm's allocation is the truth: the GPUs it gave, its cgroups (no caps of the agent's).
                "resources": {"cpus": None, "memory_bytes": None, "gpus": list(node.gpus)},
            },
            hostname=node.hostname,
            address=address,
            addresses=tuple(a.address for a in agents),
        )

    # -- ends --------------------------------------------------------------------------------------------

    async def job_ended(self, host_name: str, job_id: str) -> JobEnd | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        try:
            info = await job.cluster.job(job.slurm_id)
        except SlurmError:
            return None  # the cluster does not answer: the supervisor's host-lost rules apply
        if info is None:
            return JobEnd(
                RunStatus.FAILED,
                TerminationReason.HOST_LOST,
                f"host lost: Slurm no longer knows job {job.slurm_id}",
            )
        info = info.settled(agent_waits=job.client is not None)
        return outcome(info) if info.phase == "ended" else None

    async def release(self, host_name: str, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        cluster = job.cluster
        if job.client is not None:
            with contextlib.suppress(AgentError):
                await job.client.delete_job(job_id)  # the agent exits with it (its node's part of the job)
            await job.client.close()
        if job.forward is not None:
            with contextlib.suppress(SSHError):
                await cluster.connection.unforward(*job.forward)
        if any(other.slurm_id == job.slurm_id for other in self._jobs.values()):
            return  # other nodes of the run still hold the Slurm job: the last one to end waits for it
        self._shipping.pop(job.slurm_id, None)
        started = time.monotonic()
        cancelled = False
        while True:
            try:
                info = await cluster.watcher.get(job.slurm_id)
                if info is None or info.phase == "ended":
                    return
                waited = time.monotonic() - started
                if not cancelled and (job.client is None or info.phase == "pending" or waited > 3.0):
                    await cluster.cancel(job.slurm_id)
                    cancelled = True
                if waited > RELEASE_WAIT:
                    raise SlurmError(f"Slurm job {job.slurm_id} is still {info.state}")
            except SlurmError as e:
                log.warning("slurm job %s: will cancel it later: %s", job.slurm_id, e.message)
                self._orphan(cluster, job.slurm_id)
                return
            await asyncio.sleep(0.05 if not cancelled else 0.25)

    async def _cancel(self, cluster: SlurmCluster, slurm_id: str) -> None:
        try:
            await cluster.cancel(slurm_id)
        except SlurmError:
            self._orphan(cluster, slurm_id)

    def _orphan(self, cluster: SlurmCluster, slurm_id: str) -> None:
        self._orphans.add(cluster.name, slurm_id)
        self._retry_orphans()

    def _retry_orphans(self) -> None:
        """Cancel what could not be cancelled as soon as its login node answers again (every
        ORPHAN_RETRY seconds while any is left; listings try too)."""
        if self._orphan_task is not None and not self._orphan_task.done():
            return

        async def retry() -> None:
            while any(self._orphans.of(name) for name in self.clusters):
                await asyncio.sleep(ORPHAN_RETRY)
                for cluster in self.clusters.values():
                    await self._cancel_orphans(cluster)

        self._orphan_task = asyncio.create_task(retry())

    async def _cancel_orphans(self, cluster: SlurmCluster) -> None:
        for slurm_id in self._orphans.of(cluster.name):
            try:
                await cluster.cancel(slurm_id)
            except SlurmError:
                return
            self._orphans.remove(cluster.name, slurm_id)

    # -- what travels ------------------------------------------------------------------------------------

    def _token(self, job_id: str) -> str:
        digest = hmac.new(self._secret, job_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    async def _agent_payload(self) -> str:
        if self._agent_b64 is None:
            artifact = await asyncio.to_thread(agent_zipapp, self._dir / "artifacts")
            self._agent_b64 = base64.encodebytes(artifact.path.read_bytes()).decode().strip()
        return self._agent_b64

    async def _uv_binary(self, shape: Shape) -> tuple[Path, str]:
        """The server's own uv (its `uv` dependency) and a short hash, if it can run on the shape's nodes;
        else ("", "") and the agent makes venvs with the node's `python -m venv`."""
        if platform.system() != "Linux" or platform.machine() != shape.arch:
            return Path(), ""
        if self._uv is None:
            from uv import find_uv_bin

            path = Path(find_uv_bin())
            self._uv = (path, await asyncio.to_thread(_sha16, path))
        return self._uv

    async def _ship_uv(self, cluster: SlurmCluster, slurm_id: str, work_dir: str, shape: Shape) -> None:
        path, sha = await self._uv_binary(shape)
        if not sha:
            return
        remote = f"{UV_ON_LOGIN}/uv-{sha}"
        try:
            await cluster.ensure_file(path, remote)
            await cluster.broadcast(slurm_id, remote, f"{work_dir}/bin/uv")
        except SlurmError as e:
            # Not fatal: without uv the agent makes venvs with `python -m venv` where the node has it.
            log.warning("slurm job %s: uv was not shipped to its node: %s", slurm_id, e.message)

    def _cluster_of(self, host_name: str) -> SlurmCluster:
        return self.clusters[host_name.split("/")[0]]


def _failed(message: str) -> JobEnd:
    return JobEnd(RunStatus.FAILED, TerminationReason.FAILED_TO_START, message)


def _check_grace(error: SlurmError, since: float | None) -> float:
    """While the login node does not answer, a launch waits UNREACHABLE_GRACE; anything else ends it."""
    now = time.monotonic()
    if not error.unreachable:
        raise LaunchFailed(_failed(f"failed to start: {error.message}")) from error
    since = since if since is not None else now
    if now - since > UNREACHABLE_GRACE:
        raise LaunchFailed(
            JobEnd(RunStatus.FAILED, TerminationReason.HOST_LOST, f"host lost: {error.message}")
        )
    return since


def _sha16(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()[:16]
