"""The driver protocol: everything the runner needs from "a way to run a job", nothing more.

A job's processes write their output straight into the job's output file and outlive the agent that
started them: a restarted (or upgraded) agent `adopt`s the main phase of a job an earlier agent started
and carries on waiting for it and stopping it, as if it had started it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Tuple

from dstack.agent.jobs.spec import JobResources
from dstack.agent.logstore import LogStore

# What `wait` returns for a job that ended with no exit status anyone could see (an adopted job killed by
# SIGKILL, or one whose container vanished).
EXIT_UNKNOWN = -1
PHASE_MAIN = "main"
PHASE_BUILD = "build"


@dataclass(frozen=True)
class ContainerSpec:
    """What a container driver needs beyond a process: the image and how the job's files appear in it."""

    image: str
    code_dir: Path  # mounted read-write at `code_mount`
    code_mount: str
    workdir: str  # the working directory inside the container (absolute, or ~/... for its user's home)
    use_image_command: bool = False  # no commands: run the image's own entrypoint/command
    argv: Optional[List[str]] = None  # `entrypoint` + commands, run instead of the script
    shell: Optional[str] = None  # sh, bash or an absolute path (default: bash where the image has it)
    user: Optional[str] = None
    privileged: bool = False
    mounts: List[Tuple[str, str, bool]] = field(default_factory=list)  # (host, container, read-only)
    copies: List[Tuple[str, str, str]] = field(default_factory=list)  # (kind, source, target) at start


@dataclass(frozen=True)
class LaunchSpec:
    job_id: str
    marker: str  # unique per job, must end up in the environment of every process of the job
    script: Path  # a bash script holding the job's commands
    cwd: Path
    env: Dict[str, str]
    logs: LogStore  # stdout and stderr go into its file (see logstore.py)
    resources: JobResources = field(default_factory=JobResources)  # limits to enforce where possible
    container: Optional[ContainerSpec] = None  # set for the container driver
    args: List[str] = field(default_factory=list)  # the script's positional parameters (the run's arguments)
    argv: Optional[List[str]] = None  # processes: what to run (default: bash with the script)
    phase: str = PHASE_MAIN  # only a main phase is taken over by a restarted agent


def process_shell(shell: Optional[str]) -> List[str]:
    """The argv prefix that runs a job's script as processes: bash unless `shell` says sh or a path."""
    if shell is None or shell == "bash":
        return ["bash", "--noprofile", "--norc"]
    if shell == "sh":
        return ["/bin/sh"]
    return [shell]


@dataclass(frozen=True)
class JobHandle:
    """A started (or adopted) job. Drivers may subclass it to keep their own details."""

    pid: int  # the job's main process, as shown to the API
    pgid: Optional[int]  # the job's process group, if it has one of its own
    marker: str


class Driver(Protocol):
    def start(self, launch: LaunchSpec) -> JobHandle:
        """Start the job; raise OSError if it cannot be started."""

    def wait(self, handle: JobHandle, timeout: Optional[float]) -> Optional[int]:
        """The main process's exit code (128+N if killed by signal N; EXIT_UNKNOWN if nobody could see
        it), or None if `timeout` passed."""

    def stop(self, handle: JobHandle, grace_seconds: float, abort: bool) -> None:
        """End every process of the job: SIGTERM then SIGKILL after the grace, or SIGKILL at once."""

    def inspect(self, handle: JobHandle) -> List[int]:
        """The pids of the job's processes still alive."""

    def release(self, handle: JobHandle) -> None:
        """Free what the ended job still holds (a container); called once its output is published."""

    def adopt(self, marker: str, folder: Path, logs: LogStore) -> Optional[JobHandle]:
        """The main phase of a job an earlier agent started in `folder`, if it still runs (else None)."""

    def ended(self, marker: str, folder: Path, logs: LogStore) -> Optional[int]:
        """The exit code of a job's main phase that ended while no agent watched it, if known; first
        stores whatever of its output only the driver holds."""

    def recover(self, marker: str, grace_seconds: float) -> None:
        """End whatever is left of a job started by an earlier agent (a build, background processes)."""
