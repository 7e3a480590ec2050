"""The thread that moves a job's output from its pipe into its log store."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Optional

from dstack.agent.logstore import LogStore

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_POLL_MILLISECONDS = 250
_FLOOD_BYTES = 64 * 1024
_GATHER_SECONDS = 0.002


class OutputReader:
    """Reads the pipe to EOF, appending each chunk (with the time it was read) to the log store."""

    def __init__(self, fd: int, logs: LogStore, name: str) -> None:
        self._fd = fd
        self._logs = logs
        self._give_up_at: Optional[float] = None
        self._store_failed = False
        self._thread = threading.Thread(target=self._read_loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> None:
        """Wait for EOF, but stop reading after `timeout` seconds (a stray process may hold the pipe)."""
        self._give_up_at = time.monotonic() + timeout
        self._thread.join(timeout + 2 * _POLL_MILLISECONDS / 1000)
        if self._thread.is_alive():
            log.warning("The output reader %s did not stop", self._thread.name)

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while self._give_up_at is None or time.monotonic() < self._give_up_at:
            if not poller.poll(_POLL_MILLISECONDS):
                continue
            try:
                count = self._move()
            except OSError as e:
                log.warning("Reading the output of %s failed: %s", self._thread.name, e)
                return
            if not count:
                return
            if count >= _FLOOD_BYTES:
                # A flood: let the pipe fill a moment, so that it is stored (and sent on) in big pieces,
                # not in one append per write the task made. A trickle is never delayed.
                time.sleep(_GATHER_SECONDS)
        log.warning(
            "Gave up waiting for the end of %s: a process outside the job holds its pipe", self._thread.name
        )

    def _move(self) -> int:
        """Move what the pipe holds into the log store (in the kernel where it can); 0 at its end."""
        if not self._store_failed:
            try:
                moved = self._logs.splice_from(self._fd, _CHUNK, time.time())
            except OSError as e:
                # The store failed (a full disk): say so once, and go on draining through Python.
                log.error("Could not store the output of %s, dropping it: %s", self._thread.name, e)
                self._store_failed = True
                moved = None
            if moved is not None:
                return moved
        data = os.read(self._fd, _CHUNK)
        if data:
            self._store(data)
        return len(data)

    def _store(self, data: bytes) -> None:
        try:
            self._logs.append(data, time.time())
        except OSError as e:
            # Keep draining (a full pipe would freeze the job) but say once that output is being lost.
            if not self._store_failed:
                log.error("Could not store the output of %s, dropping it: %s", self._thread.name, e)
                self._store_failed = True
