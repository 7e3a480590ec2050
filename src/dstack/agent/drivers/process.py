"""Runs a job as a tree of local processes: `bash script.sh` in its own session."""

from __future__ import annotations

import fcntl
import os
import subprocess
from dataclasses import dataclass
from typing import Any, List, Optional

from dstack.agent.drivers.base import JobHandle, LaunchSpec, process_shell
from dstack.agent.limits import CGROUPS
from dstack.agent.procutil import find_job_processes, terminate_processes
from dstack.agent.reaper import ChildProcesses

_F_SETPIPE_SZ = 1031  # Linux; not exported by fcntl before Python 3.10
_PIPE_SIZE = 1024 * 1024


@dataclass(frozen=True)
class ProcessHandle(JobHandle):
    popen: Any = None  # subprocess.Popen[bytes]; Any keeps the frozen dataclass simple


class ProcessDriver:
    def __init__(self, children: ChildProcesses) -> None:
        self._children = children

    def start(self, launch: LaunchSpec) -> JobHandle:
        argv = list(launch.argv) if launch.argv else [*process_shell(None), str(launch.script)]
        # CPU and memory caps, where this host can enforce them (the plan said whether it can).
        cgroup = CGROUPS.create(launch.marker, launch.resources.cpus, launch.resources.memory_bytes)
        if cgroup is not None:
            argv = cgroup.wrap(argv)
        read_fd, write_fd = os.pipe()
        _enlarge_pipe(read_fd)
        try:
            popen = self._children.spawn(
                argv,
                cwd=str(launch.cwd),
                env=launch.env,
                stdin=subprocess.DEVNULL,
                # One pipe for both (not a pty): the order of stdout and stderr lines is kept as written.
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            CGROUPS.remove(launch.marker)
            raise
        finally:
            os.close(write_fd)
        return ProcessHandle(
            pid=popen.pid, pgid=popen.pid, marker=launch.marker, output_fd=read_fd, popen=popen
        )

    def wait(self, handle: JobHandle, timeout: Optional[float]) -> Optional[int]:
        popen = _popen(handle)
        try:
            code: int = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._children.release(popen.pid)
        return 128 - code if code < 0 else code

    def stop(self, handle: JobHandle, grace_seconds: float, abort: bool) -> None:
        terminate_processes(
            lambda: find_job_processes(handle.marker, handle.pgid, self._children.owned), grace_seconds, abort
        )
        CGROUPS.remove(handle.marker)  # it is empty now (the runner stops every job when it ends)

    def inspect(self, handle: JobHandle) -> List[int]:
        return sorted(find_job_processes(handle.marker, handle.pgid, self._children.owned))

    def release(self, handle: JobHandle) -> None:
        pass  # a process leaves nothing behind once it has been waited for

    def recover(self, marker: str, grace_seconds: float) -> None:
        # The old process group id may have been reused since: find the job by its marker only.
        terminate_processes(lambda: find_job_processes(marker), grace_seconds)
        CGROUPS.remove(marker)


def _popen(handle: JobHandle) -> Any:
    if not isinstance(handle, ProcessHandle) or handle.popen is None:
        raise TypeError("ProcessDriver was given a handle it did not create")
    return handle.popen


def _enlarge_pipe(fd: int) -> None:
    # Fewer, bigger reads for chatty jobs; best effort (the limit may be lower for unprivileged users).
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass
