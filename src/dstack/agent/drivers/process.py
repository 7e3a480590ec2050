"""Runs a job as a tree of local processes: `bash script.sh` in its own session.

The job's stdout and stderr are its output file (O_APPEND), and its script records its own exit status in
the job folder (see script.py), so the job needs nothing from the agent while it runs: an agent that dies
or hangs leaves it running, and the next agent adopts it. It finds the main process again from the pid
this driver wrote at start (checked against the job's marker, so a reused pid is never mistaken for it),
and waits for it with a pidfd, since it is no longer its child.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Set

from dstack.agent.drivers.base import EXIT_UNKNOWN, PHASE_MAIN, JobHandle, LaunchSpec, process_shell
from dstack.agent.limits import CGROUPS
from dstack.agent.logstore import LogStore
from dstack.agent.procutil import (
    ProcessExit,
    find_job_processes,
    is_job_process,
    start_ticks,
    terminate_processes,
)
from dstack.agent.reaper import ChildProcesses

MAIN_PID_FILE = "main.pid"
EXIT_FILE = "exit_code"  # written by the job's script itself (script.py)


@dataclass(frozen=True)
class ProcessHandle(JobHandle):
    popen: Any = None  # subprocess.Popen[bytes]; None for a job adopted from an earlier agent
    group_started: Optional[int] = None  # the start ticks of the group's first process (tells a reused id)
    exit_file: Optional[Path] = None
    waiter: Any = None  # ProcessExit, for an adopted job


class ProcessDriver:
    def __init__(self, children: ChildProcesses, umask: int = 0o022) -> None:
        self._children = children
        self._umask = umask  # the user's, for the files a job makes (the agent's own umask is 077)

    def start(self, launch: LaunchSpec) -> JobHandle:
        argv = list(launch.argv) if launch.argv else [*process_shell(None), str(launch.script), *launch.args]
        # CPU and memory caps, where this host can enforce them (the plan said whether it can).
        cgroup = CGROUPS.create(launch.marker, launch.resources.cpus, launch.resources.memory_bytes)
        if cgroup is not None:
            argv = cgroup.wrap(argv)
        output = launch.logs.writer_fd()
        try:
            popen = self._children.spawn(
                argv,
                cwd=str(launch.cwd),
                env=launch.env,
                stdin=subprocess.DEVNULL,
                # One file for both (not a pty): the order of stdout and stderr lines is kept as written.
                stdout=output,
                stderr=output,
                start_new_session=True,
                umask=self._umask,
            )
        except BaseException:
            CGROUPS.remove(launch.marker)
            raise
        finally:
            os.close(output)
        folder = launch.script.parent
        if launch.phase == PHASE_MAIN:
            # For a later agent: which process is the job (no fsync: a lost file only loses a takeover).
            (folder / MAIN_PID_FILE).write_text(f"{popen.pid}\n", encoding="ascii")
        started = start_ticks(popen.pid)
        return ProcessHandle(
            pid=popen.pid, pgid=popen.pid, marker=launch.marker, popen=popen, group_started=started
        )

    def wait(self, handle: JobHandle, timeout: Optional[float]) -> Optional[int]:
        process = _process(handle)
        if process.popen is None:
            if not process.waiter.wait(timeout):
                return None
            code = _read_exit_file(process.exit_file)
            return EXIT_UNKNOWN if code is None else code
        try:
            code = process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._children.release(process.popen.pid)
        return 128 - code if code < 0 else code

    def stop(self, handle: JobHandle, grace_seconds: float, abort: bool) -> None:
        terminate_processes(lambda: self._processes(handle), grace_seconds, abort)
        CGROUPS.remove(handle.marker)  # it is empty now (the runner stops every job when it ends)

    def inspect(self, handle: JobHandle) -> List[int]:
        return sorted(self._processes(handle))

    def _processes(self, handle: JobHandle) -> Set[int]:
        started = handle.group_started if isinstance(handle, ProcessHandle) else None
        return find_job_processes(handle.marker, handle.pgid, self._children.owned, group_started=started)

    def release(self, handle: JobHandle) -> None:
        waiter = _process(handle).waiter
        if waiter is not None:
            waiter.close()

    def adopt(self, marker: str, folder: Path, logs: LogStore) -> Optional[JobHandle]:
        pid = _read_int(folder / MAIN_PID_FILE)
        if pid is None or not is_job_process(pid, marker):
            return None
        # Not our child, and its group may hold reused ids by now: found by its marker from here on.
        return ProcessHandle(
            pid=pid, pgid=None, marker=marker, exit_file=folder / EXIT_FILE, waiter=ProcessExit(pid, marker)
        )

    def ended(self, marker: str, folder: Path, logs: LogStore) -> Optional[int]:
        return _read_exit_file(folder / EXIT_FILE)  # its output is in the file already

    def recover(self, marker: str, grace_seconds: float) -> None:
        # The old process group id may have been reused since: find the job by its marker only.
        terminate_processes(lambda: find_job_processes(marker), grace_seconds)
        CGROUPS.remove(marker)


def _process(handle: JobHandle) -> ProcessHandle:
    if not isinstance(handle, ProcessHandle):
        raise TypeError("ProcessDriver was given a handle it did not create")
    return handle


def _read_int(path: Optional[Path]) -> Optional[int]:
    if path is None:
        return None
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _read_exit_file(path: Optional[Path]) -> Optional[int]:
    code = _read_int(path)
    return code if code is not None and 0 <= code <= 255 else None
