"""What the server hands an agent for one job: the run spec made concrete for that job and host.

This is where the values that must never be stored in a run spec come in: project secrets (resolved into
env values and registry_auth) and the token of a run with `dstack: true`. Every user value goes to the
agent as data (JSON fields that become argv items, env entries or files), never as shell text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shlex
import time
from dataclasses import dataclass
from typing import Any

from dstack.config.errors import InterpolationError
from dstack.config.interpolation import interpolate
from dstack.config.mounts import is_outside, mount_variables
from dstack.server.context import ServerContext
from dstack.server.db.models import ProjectRow, RunRow, RunTokenRow
from dstack.server.schemas import RunSpec
from dstack.server.services import secrets, specs
from dstack.server.services.users import hash_token

# The graceful-stop limit when the task sets no stop_duration (SIGTERM, then SIGKILL after this long).
DEFAULT_STOP_GRACE = 10.0
# `stop_duration: off`: as long as the agent allows (it never waits longer than this).
UNLIMITED_STOP_GRACE = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Cluster:
    """The nodes of a run as one node's environment names them (today's dstack's variables)."""

    rank: int = 0
    addresses: tuple[str, ...] = ("127.0.0.1",)  # every node's, rank order: the master's first
    gpus_per_node: int = 0
    gpus_total: int = 0

    def env(self) -> dict[str, str]:
        return {
            "DSTACK_NODES_NUM": str(len(self.addresses)),
            "DSTACK_NODE_RANK": str(self.rank),
            "DSTACK_MASTER_NODE_IP": self.addresses[0],
            "DSTACK_NODES_IPS": "\n".join(self.addresses),
            "DSTACK_GPUS_PER_NODE": str(self.gpus_per_node),
            "DSTACK_GPUS_NUM": str(self.gpus_total),
        }

    def hostfile(self) -> str:
        """An MPI hostfile: one line per node with its slots (its GPUs, or one process on a CPU node)."""
        slots = max(1, self.gpus_per_node)
        return "".join(f"{address} slots={slots}\n" for address in self.addresses)


class JobRequestError(Exception):
    """The job cannot be handed over (e.g. a secret was deleted since submission); one sentence."""


def stop_grace_of(spec: RunSpec) -> float:
    """The task's stop_duration in seconds (the profile holds it resolved)."""
    value = spec.profile.get("stop_duration")
    if value == "off":
        return UNLIMITED_STOP_GRACE
    return float(value) if isinstance(value, (int, float)) else DEFAULT_STOP_GRACE


async def build(
    ctx: ServerContext,
    run: RunRow,
    job_id: str,
    allocation: dict[str, Any],
    *,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """`cluster`: the run's nodes (a single-node run is a cluster of one, on loopback unless said)."""
    cluster = cluster or Cluster(gpus_per_node=len(allocation.get("gpus") or []))
    checked = specs.checked_of(run.id, run.spec)
    spec, configuration, profile = checked.spec, checked.configuration, checked.profile
    names = checked.secret_names
    values = await secrets.values_of(ctx, run.project_id, names)
    if names - set(values):
        project = await _project_name(ctx, run.project_id)
        raise JobRequestError(secrets.missing_message(names - set(values), project))
    env = {key: secrets.resolve(value, values) for key, value in spec.env.items()}
    if configuration.dstack:
        await _server_access(ctx, run, job_id, env)
    env.update(cluster.env())  # after the task's own: a node cannot pose as another
    working_dir, container_workdir = spec.working_dir, None
    if working_dir is not None and is_outside(working_dir):
        working_dir, container_workdir = None, working_dir
    # The caps the agent enforces where it can (see scheduler/placement.py); None: not capped.
    cpus = allocation.get("cpu_limit") or None
    memory_gb = allocation.get("memory_limit_gb") or None
    variables = mount_variables(job_num=cluster.rank, node_rank=cluster.rank)
    repo = next((r for r in configuration.repos if r.url), None)
    auth = configuration.registry_auth
    utilization = profile.utilization_policy
    return {
        "id": job_id,
        "run_name": spec.run_name,
        "commands": spec.commands,
        "env": env,
        "working_dir": working_dir,
        "code_hash": spec.code_hash,
        "code_path": spec.code_path,
        "stop_grace_seconds": stop_grace_of(spec),
        "max_duration": profile.max_duration,
        "python": spec.python if spec.image is None else None,
        "image": spec.image,
        "build": spec.build,
        "build_policy": spec.build_policy,
        "args": spec.args,  # ${{ run.args }}: the job script's positional parameters
        "resources": {
            "cpus": cpus,
            "memory_bytes": int(memory_gb * 1024**3) if memory_gb else None,
            "gpus": allocation.get("gpus", []),
        },
        "ports": [p.container_port for p in spec.ports],
        "entrypoint": shlex.split(configuration.entrypoint) if configuration.entrypoint else None,
        "shell": configuration.shell,
        "user": configuration.user,
        "privileged": bool(configuration.privileged),
        "container_workdir": container_workdir,
        "volumes": [
            {
                "host_path": interpolate(volume.instance_path, variables),
                "path": interpolate(volume.path, variables),
                "optional": volume.optional,
            }
            for volume in configuration.volumes
        ],
        "files": [
            {"code_hash": f.code_hash, "target": f.target, "kind": f.kind, "name": f.name} for f in spec.files
        ],
        "repo": None
        if repo is None
        else {
            "url": repo.url,
            "branch": repo.branch,
            "hash": repo.hash,
            "path": repo.path,
            "if_exists": repo.if_exists,
            # dstack's default for tasks: clone only the branch the task uses.
            "single_branch": configuration.single_branch is not False,
        },
        "registry_auth": None
        if auth is None or spec.image is None
        else {
            "username": _resolve(auth.username, env, values) if auth.username else None,
            "password": _resolve(auth.password, env, values),
        },
        "utilization_policy": None
        if utilization is None
        else {
            "min_gpu_utilization": utilization.min_gpu_utilization,
            "time_window": utilization.time_window,
        },
        "nvcc": bool(configuration.nvcc),
        "mpi_hostfile": cluster.hostfile(),  # the agent writes it and names it in DSTACK_MPI_HOSTFILE
    }


def _resolve(text: str, env: dict[str, str], values: dict[str, str]) -> str:
    variables = {f"env.{key}": value for key, value in env.items()}
    variables.update({f"secrets.{key}": value for key, value in values.items()})
    try:
        return interpolate(text, variables)
    except InterpolationError as error:
        raise JobRequestError(f"registry_auth cannot be resolved: {error.message}") from None


async def _server_access(ctx: ServerContext, run: RunRow, job_id: str, env: dict[str, str]) -> None:
    """`dstack: true`: the server's URL, the project and a token scoped to this run's project and life."""
    # Derived from the job, so that handing the same job over again gives the agent the same spec.
    digest = hmac.new(ctx.settings.run_token_key(), f"run-token:{job_id}".encode(), hashlib.sha256)
    token = "run-" + base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")
    async with ctx.db.write() as session:
        await session.merge(
            RunTokenRow(
                token_hash=hash_token(token),
                run_id=run.id,
                project_id=run.project_id,
                user_id=run.user_id,
                created_at=time.time(),
            )
        )
    env.setdefault("DSTACK_SERVER_URL", ctx.settings.public_url)
    env.setdefault("DSTACK_PROJECT", await _project_name(ctx, run.project_id))
    env["DSTACK_TOKEN"] = token


async def _project_name(ctx: ServerContext, project_id: str) -> str:
    async with ctx.db.read() as session:
        row = await session.get(ProjectRow, project_id)
    return row.name if row is not None else project_id
