"""Keeping a job's orphaned processes in the agent's tree, and reaping them when they die.

The agent is a child subreaper: when a job's process exits, its orphaned children are re-parented to the
agent instead of to init, so the agent can still find and stop them. They then become the agent's children,
and their zombies must be reaped by the agent, without ever stealing the exit status of a child that a
`subprocess.Popen` object owns (that would make `Popen.wait` report a wrong code).
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import threading
from typing import Any, List, Set

from dstack.agent.procutil import list_processes

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_SCAN_INTERVAL_SECONDS = 1.0


def become_child_subreaper() -> bool:
    """Best effort: without it, orphans go to init and only the job marker still finds them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
            return True
        log.warning("Could not become a child subreaper: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:
        log.warning("Could not become a child subreaper: %s", e)
    return False


class ChildProcesses:
    """Starts the agent's own children and reaps the zombies of everything else re-parented to it.

    Every child the agent starts must go through `spawn`: the lock makes "fork + remember the pid" atomic
    with respect to a reaper scan, so a child that exits at once is never mistaken for an orphan.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owned: Set[int] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._reap_loop, name="zombie-reaper", daemon=True)

    def start_reaping(self) -> None:
        self._thread.start()

    def stop_reaping(self) -> None:
        self._stopping.set()

    def spawn(self, argv: List[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            process: subprocess.Popen[bytes] = subprocess.Popen(argv, **popen_kwargs)
            self._owned.add(process.pid)
        return process

    def owned(self) -> Set[int]:
        """The pids of the children the agent started and whose exit status is not collected yet."""
        with self._lock:
            return set(self._owned)

    def release(self, pid: int) -> None:
        """Call once the Popen owning `pid` has collected its exit status."""
        with self._lock:
            self._owned.discard(pid)

    def reap_orphans(self) -> int:
        """Reap zombie children that no Popen owns; returns how many were reaped."""
        own_pid = os.getpid()
        reaped = 0
        with self._lock:
            for info in list_processes().values():
                if info.ppid != own_pid or not info.is_zombie or info.pid in self._owned:
                    continue
                try:
                    pid, _ = os.waitpid(info.pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                reaped += pid == info.pid
        return reaped

    def _reap_loop(self) -> None:
        while not self._stopping.wait(_SCAN_INTERVAL_SECONDS):
            try:
                self.reap_orphans()
            except Exception:
                log.exception("Reaping orphaned processes failed")
