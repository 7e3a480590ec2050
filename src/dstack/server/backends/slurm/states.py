"""Slurm's view of a job (squeue / scontrol) and what it means for the run. Pure.

The batch script publishes through the job's Comment what the server needs and has no other way to learn
without a shared filesystem: `dstack:<job id>;agent=ADDR:PORT;gpus=0,1;work=DIR;uv=1;nodes=...` once the
agent of every node listens (`nodes`: each node's `HOST/ADDR:PORT/GPUS`, by rank, `|`-separated; `agent`
and `gpus` are the first node's), or `dstack:<job id>;error=TEXT` if a node cannot run it. The Comment
holds no secret (other users may read it); the agents' token never leaves the batch script.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.backends.base import JobEnd
from dstack.server.backends.slurm.inventory import parse_records

TAG = "dstack:"
SQUEUE_FORMAT = "%i|%T|%r|%N|%k"

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
ENDED = {
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
    "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
}  # fmt: skip
# Pending reasons after which Slurm will never start the job (until an admin changes a limit).
NEVER_STARTS = {
    "PartitionTimeLimit": "its time limit (max_duration) is above the partition's",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "BadConstraints": "no node can satisfy what it asks for",
    "InvalidAccount": "the user's account is not valid",
    "InvalidQOS": "the job's QOS is not valid",
    "AccountNotAllowed": "the user's account may not use the partition",
    "QOSMaxWallDurationPerJobLimit": "its time limit is above the QOS's",
    "AssocMaxWallDurationPerJobLimit": "its time limit is above the account's",
}
_EXPLAINED = {
    "Priority": "jobs with a higher priority come first",
    "Resources": "the nodes it needs are busy",
    "Dependency": "it waits for another job",
    "BeginTime": "its start time has not come",
    "JobHeldUser": "held by its user (scontrol release)",
    "JobHeldAdmin": "held by an administrator",
    "PartitionDown": "its partition is down",
    "Reservation": "it waits for its reservation",
}


# While a job ends on its own terms its state is COMPLETING, and only the reason says why (the base state
# follows once its processes are gone, up to KillWait later): a time limit shows as Reason=TimeLimit.
_ENDING_REASONS = {"TimeLimit": "TIMEOUT", "DeadLine": "DEADLINE"}


@dataclass(frozen=True)
class NodeAgent:
    """The agent of one node of a job, as the batch script published it."""

    hostname: str
    address: str
    port: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class JobInfo:
    id: str
    state: str  # squeue's state (COMPLETING while a job ends), or scontrol's base state
    reason: str
    nodes: str
    comment: str
    exit_code: int | None = None

    def settled(self, *, agent_waits: bool = False) -> JobInfo:
        """The state it is ending in, where a COMPLETING job's reason already tells. `agent_waits`: its
        agent still held the job for the server, so nothing of dstack's ended it: with no telling reason
        it was cancelled (scancel; Slurm says CANCELLED only once the agent has exited)."""
        if self.state != "COMPLETING":
            return self
        ending = _ENDING_REASONS.get(self.reason) or ("CANCELLED" if agent_waits else None)
        return replace(self, state=ending) if ending else self

    @property
    def phase(self) -> str:
        """pending | running | ended (a COMPLETING job from squeue counts as running: ask scontrol)."""
        if self.state in PENDING:
            return "pending"
        if self.state in ENDED:
            return "ended"
        return "running"

    def _field(self, name: str) -> str | None:
        if not self.comment.startswith(TAG):
            return None
        for part in self.comment.split(";")[1:]:
            key, _, value = part.partition("=")
            if key == name:
                return value
        return None

    @property
    def dstack_job(self) -> str | None:
        return self.comment[len(TAG) :].split(";", 1)[0] if self.comment.startswith(TAG) else None

    @property
    def agent(self) -> tuple[str, int] | None:
        value = self._field("agent")
        if not value or ":" not in value:
            return None
        host, _, port = value.rpartition(":")
        return (host, int(port)) if port.isdigit() else None

    @property
    def gpus(self) -> list[int]:
        return _gpus(self._field("gpus") or "")

    @property
    def node_agents(self) -> list[NodeAgent]:
        """Every node's agent in rank order (SLURM_NODEID), once all of them listen; [] before."""
        found = []
        for entry in (self._field("nodes") or "").split("|"):
            hostname, _, rest = entry.partition("/")
            agent, _, gpus = rest.partition("/")
            address, _, port = agent.rpartition(":")
            if not hostname or not address or not port.isdigit():
                return []
            found.append(NodeAgent(hostname, address, int(port), tuple(_gpus(gpus))))
        return found

    @property
    def work_dir(self) -> str | None:
        return self._field("work")

    @property
    def has_uv(self) -> bool:
        return self._field("uv") == "1"

    @property
    def error(self) -> str | None:
        return self._field("error")


def _gpus(text: str) -> list[int]:
    return [int(g) for g in text.split(",") if g.strip().isdigit()]


def parse_squeue(text: str) -> dict[str, JobInfo]:
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5 and parts[0]:
            job_id, state, reason, nodes, comment = parts
            jobs[job_id] = JobInfo(job_id, state.split()[0].upper(), reason, nodes, _comment(comment))
    return jobs


def parse_scontrol_job(text: str) -> JobInfo | None:
    records = [r for r in parse_records(text) if "JobId" in r]
    if not records:
        return None
    r = records[0]
    exit_code = r.get("ExitCode", "")
    code, _, _signal = exit_code.partition(":")
    return JobInfo(
        id=r["JobId"],
        state=r.get("JobState", "").upper(),
        reason=r.get("Reason", ""),
        nodes=r.get("NodeList", ""),
        comment=_comment(r.get("Comment", "")),
        exit_code=int(code) if code.isdigit() else None,
    )


def _comment(text: str) -> str:
    return "" if text == "(null)" else text


def pending_message(info: JobInfo) -> str:
    reason = info.reason or "None"
    if reason == "None":  # Slurm has not looked at it yet
        return f"Slurm job {info.id} is pending (just submitted)"
    head = reason.split(",")[0]
    why = _EXPLAINED.get(head) or NEVER_STARTS.get(head)
    return f"Slurm job {info.id} is pending: {reason}" + (f" ({why})" if why else "")


def never_starts(info: JobInfo) -> str | None:
    """The sentence for a pending job Slurm will never start, or None."""
    head = (info.reason or "").split(",")[0]
    why = NEVER_STARTS.get(head)
    return f"Slurm will never start job {info.id}: {head} ({why})" if why else None


def outcome(info: JobInfo) -> JobEnd:
    """How the run ends when Slurm ended its job (state from scontrol, base state)."""
    job = f"Slurm job {info.id}"
    code = info.exit_code
    state = info.state
    if state == "COMPLETED" and not code:
        return JobEnd(RunStatus.DONE, None, None, 0)
    if state in ("COMPLETED", "FAILED") and code:
        return JobEnd(RunStatus.FAILED, TerminationReason.COMMANDS_FAILED, None, code)
    if state == "CANCELLED":
        return JobEnd(
            RunStatus.TERMINATED,
            TerminationReason.CANCELLED_OUTSIDE,
            f"cancelled outside dstack: {job} was cancelled (scancel)",
        )
    if state in ("TIMEOUT", "DEADLINE"):
        return JobEnd(
            RunStatus.TERMINATED,
            TerminationReason.MAX_DURATION_EXCEEDED,
            f"max duration exceeded: Slurm ended {job} at its time limit",
        )
    if state == "PREEMPTED":
        return JobEnd(
            RunStatus.TERMINATED,
            TerminationReason.PREEMPTED,
            f"preempted: Slurm gave the nodes of {job} to another job",
        )
    if state == "OUT_OF_MEMORY":
        return JobEnd(
            RunStatus.FAILED,
            TerminationReason.COMMANDS_FAILED,
            f"killed by Slurm: {job} used more memory than it asked for",
            code or 137,
        )
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        where = f" ({info.nodes})" if info.nodes and info.nodes != "(null)" else ""
        return JobEnd(
            RunStatus.FAILED, TerminationReason.HOST_LOST, f"host lost: the node of {job} failed{where}"
        )
    detail = f"{state.lower()}" + (f", {info.reason}" if info.reason and info.reason != "None" else "")
    return JobEnd(
        RunStatus.FAILED, TerminationReason.FAILED_TO_START, f"failed to start: {job} ended ({detail})"
    )
