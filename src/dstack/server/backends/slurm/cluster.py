"""One Slurm cluster as the server sees it: Slurm's commands run on the login node over the server's SSH
connection, with every failure turned into one sentence, and one `squeue` for all the jobs being watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from dstack.server.backends.slurm.inventory import Node, Partition, parse_nodes, parse_partitions
from dstack.server.backends.slurm.states import SQUEUE_FORMAT, JobInfo, parse_scontrol_job, parse_squeue
from dstack.server.config_file import SlurmClusterConfig
from dstack.server.ssh import CommandResult, SSHConnection, SSHError, SSHPool, SSHTarget

log = logging.getLogger(__name__)

TOOLS = ("sbatch", "squeue", "scontrol", "scancel", "sbcast")
_NODES_MARK = "@@dstack-nodes@@"
_INVENTORY = (
    f'for t in {" ".join(TOOLS)}; do command -v "$t" >/dev/null || {{ echo "$t" >&2; exit 127; }}; done; '
    f"scontrol show partition -o && echo {_NODES_MARK} && scontrol show node -o"
)


class SlurmError(Exception):
    """One sentence for the user; `unreachable` if the login node did not answer (worth trying again)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.unreachable = unreachable


class SlurmRejected(SlurmError):
    """sbatch refused the submission; the message quotes Slurm."""


class SlurmCluster:
    def __init__(self, config: SlurmClusterConfig, pool: SSHPool) -> None:
        self.config = config
        self.name = config.name
        self.target = SSHTarget(
            config.hostname, port=config.port, user=config.user, identity_file=config.identity_file
        )
        self.connection: SSHConnection = pool.connection(self.target)
        self.watcher = JobWatcher(self.jobs)
        self._opened = False

    async def run(
        self, argv: list[str], *, input: bytes | None = None, timeout: float = 60.0
    ) -> CommandResult:
        try:
            if not self._opened:
                # Trust on first use: the login node's key is pinned by the first connection (a later,
                # different key is refused by the SSH layer).
                await self.connection.open(pin=True)
                self._opened = True
            result = await self.connection.run(argv, input=input, timeout=timeout)
        except SSHError as e:
            raise SlurmError(f"Slurm cluster {self.name}: {e.message}", unreachable=e.unreachable) from e
        if result.returncode == 127:
            missing = result.error_text.splitlines()[-1:] or [argv[0]]
            tool = missing[0].split(":")[0].strip() or argv[0]
            raise SlurmError(
                f"{tool} is not on PATH on the login node {self.target.label} of Slurm cluster {self.name}: "
                "install Slurm's client commands there or put them on the PATH of SSH sessions"
            )
        return result

    # -- inventory ---------------------------------------------------------------------------------------

    async def inventory(self) -> tuple[list[Partition], list[Node]]:
        result = await self.run(["/bin/sh", "-c", _INVENTORY], timeout=30)
        if result.returncode != 0:
            raise SlurmError(
                f"Slurm cluster {self.name} did not list its partitions: {_last(result) or 'scontrol failed'}"
            )
        partitions, _, nodes = result.text.partition(_NODES_MARK)
        return parse_partitions(partitions), parse_nodes(nodes)

    # -- jobs --------------------------------------------------------------------------------------------

    async def submit(self, command: list[str], script: str) -> str:
        result = await self.run(command, input=script.encode(), timeout=60)
        if result.returncode != 0:
            errors = [
                line.split("error:", 1)[1].strip()
                for line in result.error_text.splitlines()
                if "error:" in line
            ]
            quoted = "; ".join(errors) or _last(result) or f"sbatch exited with code {result.returncode}"
            raise SlurmRejected(f'Slurm rejected the job: "{quoted}"')
        job_id = result.text.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(
                f"sbatch on cluster {self.name} answered {result.text.strip()[:80]!r}, not a job id"
            )
        return job_id

    async def jobs(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """What squeue knows of these jobs (ended ones too, while slurmctld remembers them)."""
        result = await self.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", SQUEUE_FORMAT])
        if result.returncode != 0:
            if "Invalid job id" in result.error_text:
                return {}
            raise SlurmError(f"squeue failed on cluster {self.name}: {_last(result)}")
        return parse_squeue(result.text)

    async def job(self, job_id: str) -> JobInfo | None:
        """scontrol's view: the base state (CANCELLED, TIMEOUT, ...) while squeue still says COMPLETING."""
        result = await self.run(["scontrol", "show", "job", "-o", job_id])
        if result.returncode != 0:
            if "Invalid job id" in result.error_text:
                return None
            raise SlurmError(f"scontrol failed on cluster {self.name}: {_last(result)}")
        return parse_scontrol_job(result.text)

    async def find(self, comment: str) -> str | None:
        """The id of the user's job whose Comment starts with `comment` (a submission not yet recorded)."""
        result = await self.run(["squeue", "-h", "-u", self.config.user, "-o", SQUEUE_FORMAT])
        if result.returncode != 0:
            return None
        for info in parse_squeue(result.text).values():
            if info.comment == comment or info.comment.startswith(comment + ";"):
                return info.id
        return None

    async def cancel(self, job_id: str) -> None:
        await self.run(["scancel", job_id])

    async def broadcast(self, job_id: str, source: str, destination: str) -> None:
        """Copy a file of the login node to every node of the job (sbcast)."""
        result = await self.run(["sbcast", "-j", job_id, "--force", source, destination], timeout=600)
        if result.returncode != 0:
            raise SlurmError(f"sbcast to the nodes of Slurm job {job_id} failed: {_last(result)}")

    async def ensure_file(self, local: Path, remote: str) -> None:
        """`remote` (under the login user's home) holds `local`, executable; sent only if missing."""
        if (await self.run(["test", "-x", remote])).returncode == 0:
            return
        try:
            await self.connection.upload(local, remote, mode="700")
        except SSHError as e:
            raise SlurmError(f"Slurm cluster {self.name}: {e.message}", unreachable=e.unreachable) from e


class JobWatcher:
    """Coalesces the supervisors' questions "how is job N?": whoever asks while a query is on its way gets
    the next one, and one `squeue` answers every job asked about."""

    def __init__(self, fetch: Callable[[list[str]], Awaitable[dict[str, JobInfo]]]) -> None:
        self._fetch = fetch
        self._waiting: dict[str, list[asyncio.Future[JobInfo | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, job_id: str) -> JobInfo | None:
        future: asyncio.Future[JobInfo | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._serve())
        return await future

    async def _serve(self) -> None:
        while self._waiting:
            await asyncio.sleep(0.005)  # the questions right behind this one go in the same query
            batch, self._waiting = self._waiting, {}
            try:
                answers = await self._fetch(sorted(batch))
            except Exception as e:
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(e)
                continue
            for job_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(answers.get(job_id))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _last(result: CommandResult) -> str:
    lines = [line.strip() for line in result.error_text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
