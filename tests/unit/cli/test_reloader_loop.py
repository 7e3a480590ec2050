"""The --reload loop with a real watcher on a real folder and a transport that records what it was sent:
edits wait for the run to be submitted, and a change whose event was lost still travels (issue 13, item 4).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dstack.cli.reload import reloader as reloader_module
from dstack.cli.reload.batch import Batch
from dstack.cli.reload.reloader import Reloader
from dstack.cli.reload.transport import NotReady
from dstack.code.ignore import IgnoreRules


class RecordingTransport:
    """Takes batches once `running`; before, answers as the server does for a run that is not running."""

    def __init__(self, *, submitted: bool) -> None:
        self.submitted = submitted
        self.running = threading.Event()
        self.received: list[str] = []
        self.attempts = 0
        self.lock = threading.Lock()

    def send_batch(self, batch: Batch) -> dict[str, Any]:
        self.attempts += 1
        if not self.running.is_set():
            raise NotReady("not running yet")
        with self.lock:
            self.received += [entry[0] for entry in batch.entries]
        return {"job_id": "job-1", "errors": []}

    def compare(self, entries: list[list[Any]]) -> dict[str, Any]:
        return {"job_id": "job-1", "results": [True] * len(entries)}

    def close(self) -> None:
        pass


def _wait(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _reloader(root: Path, transport: RecordingTransport) -> Reloader:
    return Reloader(transport, str(root), IgnoreRules(root), warn=lambda m: None, info=lambda m: None)  # type: ignore[arg-type]


def test_edits_before_the_run_exists_wait_for_it(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("v1")
    transport = RecordingTransport(submitted=False)
    reloader = _reloader(tmp_path, transport)
    reloader.start(baseline=True)
    try:
        (tmp_path / "app.py").write_text("v2, saved while the code uploads")
        time.sleep(1.0)
        assert transport.attempts == 0  # nothing is sent for a run that does not exist yet
        transport.running.set()
        reloader.submitted()
        _wait(lambda: "app.py" in transport.received)
    finally:
        reloader.stop()


def test_a_change_whose_event_was_lost_travels_with_the_next_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader_module, "RESCAN_MIN", 0.5)
    (tmp_path / "app.py").write_text("v1")
    transport = RecordingTransport(submitted=True)
    transport.running.set()
    reloader = _reloader(tmp_path, transport)
    reloader.start(baseline=True)
    try:
        # What the index says the task holds no longer matches the disk, and no event says so: as after
        # an inotify overflow, which watchfiles drops.
        stale = reloader.index.get("app.py")
        assert stale is not None
        reloader.index.put("app.py", stale._replace(size=stale.size + 1))
        _wait(lambda: "app.py" in transport.received)
    finally:
        reloader.stop()
