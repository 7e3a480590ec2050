"""Run/job statuses and termination reasons (SPEC §8), shared by the server, the client and the CLI.

Plain enums with no third-party imports: the CLI's fast path imports this.
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    SUBMITTED = "submitted"
    PENDING = "pending"  # waiting for capacity
    PROVISIONING = "provisioning"  # placed on a host; the job is being handed to its agent
    PULLING = "pulling"  # the agent prepares the environment (code, venv, image, build)
    RUNNING = "running"
    TERMINATING = "terminating"
    DONE = "done"
    FAILED = "failed"
    TERMINATED = "terminated"
    ABORTED = "aborted"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_STATUSES

    @property
    def is_active(self) -> bool:
        """Placed on a host and holding capacity there."""
        return self in ACTIVE_STATUSES


FINISHED_STATUSES = frozenset({RunStatus.DONE, RunStatus.FAILED, RunStatus.TERMINATED, RunStatus.ABORTED})
ACTIVE_STATUSES = frozenset(
    {RunStatus.PROVISIONING, RunStatus.PULLING, RunStatus.RUNNING, RunStatus.TERMINATING}
)
WAITING_STATUSES = frozenset({RunStatus.SUBMITTED, RunStatus.PENDING})


class TerminationReason(str, Enum):
    """Why a run ended other than `done`. The value is the stable code; `describe` the sentence."""

    COMMANDS_FAILED = "commands_failed"
    NO_CAPACITY = "no_capacity"
    RETRY_LIMIT_EXCEEDED = "retry_limit_exceeded"
    STOPPED_BY_USER = "stopped_by_user"
    ABORTED_BY_USER = "aborted_by_user"
    MAX_DURATION_EXCEEDED = "max_duration_exceeded"
    HOST_LOST = "host_lost"
    BUILD_FAILED = "build_failed"
    BUILD_NOT_FOUND = "build_not_found"
    FAILED_TO_START = "failed_to_start"
    SERVER_ERROR = "server_error"
    LOG_QUOTA_EXCEEDED = "log_quota_exceeded"
    UTILIZATION_POLICY = "utilization_policy"
    CANCELLED_OUTSIDE = "cancelled_outside_dstack"  # e.g. `scancel` of a Slurm job by its user
    PREEMPTED = "preempted"  # the backend gave the job's capacity to another (Slurm preemption)
    # A node of a multi-node run stopped because its run ended (another node failed, the master is done).
    TERMINATED_BY_SERVER = "terminated_by_server"

    def describe(self, exit_code: int | None = None) -> str:
        if self is TerminationReason.COMMANDS_FAILED and exit_code is not None:
            return f"commands failed with exit code {exit_code}"
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    TerminationReason.COMMANDS_FAILED: "commands failed",
    TerminationReason.NO_CAPACITY: "no capacity",
    TerminationReason.RETRY_LIMIT_EXCEEDED: "retry limit exceeded",
    TerminationReason.STOPPED_BY_USER: "stopped by user",
    TerminationReason.ABORTED_BY_USER: "aborted by user",
    TerminationReason.MAX_DURATION_EXCEEDED: "max duration exceeded",
    TerminationReason.HOST_LOST: "host lost",
    TerminationReason.BUILD_FAILED: "build failed",
    TerminationReason.BUILD_NOT_FOUND: "build not found",
    TerminationReason.FAILED_TO_START: "failed to start",
    TerminationReason.SERVER_ERROR: "server error",
    TerminationReason.LOG_QUOTA_EXCEEDED: "log quota exceeded",
    TerminationReason.UTILIZATION_POLICY: "terminated due to utilization policy",
    TerminationReason.CANCELLED_OUTSIDE: "cancelled outside dstack",
    TerminationReason.PREEMPTED: "preempted",
    TerminationReason.TERMINATED_BY_SERVER: "terminated by the server (its run ended)",
}
