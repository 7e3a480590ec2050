"""Job events: one long-lived stream per server telling, for every job, what changed (issue 15).

Following each job with its own long-poll costs a few HTTP exchanges per job; a burst of a thousand tiny
jobs spent most of the agent's and the server's time on them. `GET /api/events` instead stays open and
sends, as they happen, batches of what changed: each batch is one line of JSON, then the output bytes it
carries inline, back to back:

    {"jobs": [{"id", "status", "message", "exit_code", "reason_code", "size", "from", "length"}]}\\n<bytes>

`size` is the job's output so far; a small increment of output travels inline (`length` bytes starting
at offset `from`), a bigger one is only announced (the server reads it with GET /api/jobs/J/logs). A job
gone from the agent is `{"id", "gone": true}`. The first batch describes every job; an empty batch every
few seconds says the stream is alive. The status is read before the size, as for the logs route: a final
status always comes with all of its output.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http import HTTPStatus
from typing import Any, Dict, List, Optional, Set, Tuple

from dstack.agent.httpserver import Exchange, Route
from dstack.agent.jobs.registry import JobRegistry

HEARTBEAT_SECONDS = 5.0
INLINE_BYTES = 64 * 1024  # more output than this since the last batch is announced, not carried
BATCH_INLINE_BYTES = 4 * 1024 * 1024
OUTPUT_EVERY_SECONDS = 0.01  # at most this often a batch that only says output grew


class JobEvents:
    """Which jobs changed, for each subscriber (every stream keeps its own set)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._subscribers: List[Set[str]] = []
        self._closed = False

    def changed(self, job_id: str) -> None:
        with self._changed:
            for pending in self._subscribers:
                pending.add(job_id)
            self._changed.notify_all()

    def subscribe(self, job_ids: List[str]) -> Set[str]:
        pending = set(job_ids)
        with self._changed:
            self._subscribers.append(pending)
        return pending

    def unsubscribe(self, pending: Set[str]) -> None:
        with self._changed:
            self._subscribers = [s for s in self._subscribers if s is not pending]

    def take(self, pending: Set[str], timeout: float) -> Optional[List[str]]:
        """The jobs changed since the last take (waiting up to `timeout`); None once closed."""
        with self._changed:
            if not pending and not self._closed:
                self._changed.wait(timeout)
            if self._closed:
                return None
            taken = list(pending)
            pending.clear()
            return taken

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class EventRoutes:
    def __init__(self, registry: JobRegistry, events: JobEvents) -> None:
        self._registry = registry
        self._events = events

    def routes(self) -> List[Route]:
        return [Route("GET", r"/api/events", self.stream)]

    def stream(self, exchange: Exchange) -> None:
        write = exchange.start_stream(HTTPStatus.OK, "application/x-dstack-events")
        pending = self._events.subscribe([job.id for job in self._registry.list()])
        sent: Dict[str, Tuple[str, Optional[str], int]] = {}  # job id -> status, message, size told
        told_output_at = 0.0
        try:
            while True:
                changed = self._events.take(pending, HEARTBEAT_SECONDS)
                if changed is None:
                    return
                batch, states_changed = self._batch(changed, sent)
                if not states_changed and batch is not None:
                    # Only output grew: a flood would otherwise make a batch of every pipe read. Waiting
                    # a moment lets the next ones join it (a status change is never kept waiting).
                    pause = told_output_at + OUTPUT_EVERY_SECONDS - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                        more = self._events.take(pending, 0)
                        if more:
                            batch, _ = self._batch(more, sent, batch)
                    told_output_at = time.monotonic()
                write(self._empty if batch is None else self._encode(*batch))
        except OSError:
            return  # the server went away; it subscribes again when it comes back
        finally:
            self._events.unsubscribe(pending)

    _empty = b'{"jobs":[]}\n'

    def _batch(
        self,
        changed: List[str],
        sent: Dict[str, Tuple[str, Optional[str], int]],
        into: Optional[Tuple[List[Dict[str, Any]], List[bytes]]] = None,
    ) -> Tuple[Optional[Tuple[List[Dict[str, Any]], List[bytes]]], bool]:
        """The entries and inline bytes for the jobs that changed (None if nothing did), and whether a
        status or message changed (output growing alone is not urgent)."""
        entries, chunks = into if into is not None else ([], [])
        states_changed = False
        inline_budget = BATCH_INLINE_BYTES - sum(len(chunk) for chunk in chunks)
        for job_id in dict.fromkeys(changed):
            job = self._registry.get(job_id)
            if job is None:
                if sent.pop(job_id, None) is not None:
                    entries.append({"id": job_id, "gone": True})
                    states_changed = True
                continue
            state = job.state  # before the size: a final status comes with all of its output
            size = job.logs.size()
            told = sent.get(job_id)
            if told == (state.status, state.message, size):
                continue
            states_changed = states_changed or told is None or told[:2] != (state.status, state.message)
            entry: Dict[str, Any] = {
                "id": job_id,
                "status": state.status,
                "message": state.message,
                "exit_code": state.exit_code,
                "reason_code": state.reason_code,
                "size": size,
            }
            start = told[2] if told is not None else 0
            if 0 < size - start <= min(INLINE_BYTES, inline_budget):
                data = _read(str(job.logs.log_path), start, size - start)
                if len(data) == size - start:
                    entry["from"], entry["length"] = start, len(data)
                    chunks.append(data)
                    inline_budget -= len(data)
            sent[job_id] = (state.status, state.message, size)
            entries.append(entry)
        return ((entries, chunks) if entries else None), states_changed

    @staticmethod
    def _encode(entries: List[Dict[str, Any]], chunks: List[bytes]) -> bytes:
        return json.dumps({"jobs": entries}, separators=(",", ":")).encode() + b"\n" + b"".join(chunks)


def _read(path: str, offset: int, count: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, count, offset)
    finally:
        os.close(fd)
