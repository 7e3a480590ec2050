"""Finding and ending the processes of a job (Linux /proc).

One helper finds "the processes of job X", one terminates a set of processes (SIGTERM, wait, SIGKILL);
stop, end-of-job cleanup and recovery all reuse them.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Set

log = logging.getLogger(__name__)

JOB_MARKER_ENV = "DSTACK_JOB_MARKER"
# After SIGKILL a process can still take a moment to disappear (e.g. uninterruptible disk sleep).
_KILL_SETTLE_SECONDS = 5.0
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    state: str

    @property
    def is_zombie(self) -> bool:
        # A zombie has exited already: signals are no-ops and only its parent's wait removes it.
        return self.state in ("Z", "X")


def read_process(pid: int) -> Optional[ProcessInfo]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    tail = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcessInfo(pid=pid, state=tail[0].decode(), ppid=int(tail[1]), pgid=int(tail[2]))
    except (IndexError, ValueError):
        return None


def list_processes() -> Dict[int, ProcessInfo]:
    processes: Dict[int, ProcessInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_process(int(name))
            if info is not None:
                processes[info.pid] = info
    return processes


def job_marker_of(pid: int) -> Optional[str]:
    """The job marker in the environment `pid` was started with; None if it has none (or is gone)."""
    prefix = f"{JOB_MARKER_ENV}=".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return None
    for entry in entries:
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


# Set once the agent is a child subreaper (see reaper.py): then every orphan of a job is the agent's child.
SUBREAPER = {"active": False}


def _surely_gone(marker: str, pgid: int, owned: Set[int]) -> bool:
    """True when the job can have no process left, proven without scanning all of /proc.

    With the agent a subreaper, a live process of a job whose first process ended either is in the job's
    group or descends from an orphan the agent inherited (its ancestors up to the job's first process died,
    and orphans re-parent to the agent). So: an empty group and no orphan child of the agent carrying the
    job's marker mean nothing is left. This saves a read of every process's environment at the end of
    every job, the agent's largest cost for short jobs.

    Orphans are re-parented to the agent's first live thread, its main one; so are the children of a job
    thread that ended. Only the main thread's children need a look, and of those only the ones the agent
    did not start itself (`owned`: other jobs' first processes, tools), whatever the number of jobs.
    """
    if not SUBREAPER["active"]:
        return False
    try:
        os.killpg(pgid, 0)
        return False  # someone (perhaps only a zombie) is still in the group: look properly
    except ProcessLookupError:
        pass
    except OSError:
        return False
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            children = {int(pid) for pid in f.read().split()}
    except OSError:
        return False
    # A child carrying the job's marker, or none at all (it cleared its environment), needs a proper look.
    return all(job_marker_of(child) not in (marker, None) for child in children - owned)


def find_job_processes(
    marker: str,
    pgid: Optional[int] = None,
    owned: Optional[Callable[[], Set[int]]] = None,
    group_started: Optional[int] = None,
) -> Set[int]:
    """The live (non-zombie) processes of a job.

    A job's processes are its process group (while the agent knows the group is the job's), every process
    started with the job's unique marker in its environment (this catches daemons that called setsid and
    left the group), and every descendant of those (this catches processes that cleared their environment).
    `owned` gives the pids the agent started itself and still owns (none of them is an orphan).
    """
    if pgid is not None and group_started is not None and start_ticks(pgid) not in (None, group_started):
        # Linux hands an id out again only once no process uses it as a process or group id, so while the
        # job's group lives nothing else has it. Once the group is empty, a new process (pids wrap at 32768
        # by default) may get it and, calling setsid, lead a group of that id: its processes would count as
        # the job's, which would then never end.
        pgid = None  # another process group now: only the marker (and descent) tells the job's processes
    if pgid is not None and owned is not None and _surely_gone(marker, pgid, owned()):
        return set()
    processes = list_processes()
    # Never the agent nor init: walking their descendants would take in every other job too.
    excluded = {os.getpid(), 1}
    found = set()
    for info in processes.values():
        if info.pid in excluded:
            continue
        process_marker = job_marker_of(info.pid)
        # A group member carrying another job's marker is another job's (its group id was reused).
        in_group = pgid is not None and info.pgid == pgid and process_marker is None
        if process_marker == marker or in_group:
            found.add(info.pid)
    children: Dict[int, Set[int]] = {}
    for info in processes.values():
        children.setdefault(info.ppid, set()).add(info.pid)
    pending = list(found)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in found and child not in excluded:
                found.add(child)
                pending.append(child)
    return {pid for pid in found if not processes[pid].is_zombie}


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def terminate_processes(find: Callable[[], Set[int]], grace_seconds: float, abort: bool = False) -> bool:
    """SIGTERM every process `find` returns, SIGKILL whatever is left after the grace period.

    `find` is called again on every poll, so processes forked while the job shuts down are caught too.
    With `abort`, SIGKILL at once. Returns True if nothing is left alive.
    """
    if not abort:
        signalled: Set[int] = set()
        deadline = time.monotonic() + max(0.0, grace_seconds)
        while True:
            alive = find()
            if not alive:
                return True
            fresh = alive - signalled
            _signal_all(fresh, signal.SIGTERM)
            signalled |= fresh
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_SECONDS)
    deadline = time.monotonic() + _KILL_SETTLE_SECONDS
    while True:
        alive = find()
        if not alive:
            return True
        _signal_all(alive, signal.SIGKILL)
        if time.monotonic() >= deadline:
            log.warning("Processes %s survived SIGKILL", sorted(alive))
            return False
        time.sleep(_POLL_SECONDS)


def is_job_process(pid: int, marker: str) -> bool:
    """True if `pid` is alive (not a zombie) and was started with the job's marker (so not a reused pid)."""
    info = read_process(pid)
    return info is not None and not info.is_zombie and job_marker_of(pid) == marker


def start_ticks(pid: int) -> Optional[int]:
    """When the process started, in clock ticks since boot: exact, unlike a unix time derived from
    /proc/stat's btime, which may move by a second. None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw[raw.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def started_at(pid: int) -> Optional[float]:
    """When the process started (unix time), from /proc; None if it is gone."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class ProcessExit:
    """Waits for a process that is not our child to end (a job taken over from an earlier agent).

    A pidfd (Linux 5.3+) becomes readable when the process exits, so the wait costs nothing; elsewhere
    /proc is polled.
    """

    def __init__(self, pid: int, marker: str) -> None:
        self.pid = pid
        self.marker = marker
        self._fd: Optional[int] = None
        try:
            self._fd = os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
        except (AttributeError, OSError):
            self._fd = None

    def wait(self, timeout: Optional[float]) -> bool:
        """True once the process has ended; False if `timeout` passed first."""
        import select

        deadline = None if timeout is None else time.monotonic() + timeout
        while is_job_process(self.pid, self.marker):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            step = 1.0 if remaining is None else min(1.0, remaining)
            if self._fd is not None:
                poller = select.poll()
                poller.register(self._fd, select.POLLIN)
                poller.poll(step * 1000)
            else:
                time.sleep(min(step, 0.1))
        self.close()
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
