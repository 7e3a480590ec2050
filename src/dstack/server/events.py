"""In-process wake-ups, so background loops and log streams react at once instead of polling.

A `Signal` is a version counter: read `version`, check your state, then `wait(version)`; a notify that lands
between the check and the wait is never missed because the version has already moved on.
"""

from __future__ import annotations

import asyncio


class Signal:
    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seen_version: int, timeout: float) -> bool:
        """Wait until the version differs from `seen_version`; False on timeout."""
        if self.version != seen_version:
            return True
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except asyncio.TimeoutError:
            return self.version != seen_version
        return True


class Notifier:
    """Named signals: one per background loop ("schedule", "supervise"), and per run (status, output,
    stop requests)."""

    def __init__(self) -> None:
        self._signals: dict[str, Signal] = {}

    def signal(self, name: str) -> Signal:
        sig = self._signals.get(name)
        if sig is None:
            sig = self._signals[name] = Signal()
        return sig

    def notify(self, name: str) -> None:
        sig = self._signals.get(name)
        if sig is not None:
            sig.notify()
        if name.startswith(_RUN_PREFIX):
            # Whatever concerns one run may change a list of runs: wake those who watch lists (they check
            # the history table for what really changed, see services/history.py).
            runs = self._signals.get(RUNS)
            if runs is not None:
                runs.notify()

    def forget(self, name: str) -> None:
        self._signals.pop(name, None)


SCHEDULE = "schedule"
SUBMITTED = "submitted"  # a run was recorded waiting (a SCHEDULE that certainly has work)
SUPERVISE = "supervise"
RETENTION = "retention"  # a run ended: finished runs may be over the retention limits
RUNS = "runs"
_RUN_PREFIX = "run:"
RECONCILE = "reconcile"  # a host answers again: stop what it runs that has ended here


def run_channel(run_id: str) -> str:
    return f"{_RUN_PREFIX}{run_id}"


def output_channel(run_id: str) -> str:
    """New output of the run (its status changes go to run_channel)."""
    return f"output:{run_id}"


def stop_channel(run_id: str) -> str:
    return f"stop:{run_id}"
