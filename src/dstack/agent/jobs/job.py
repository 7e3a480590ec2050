"""One job on this host: its spec, its state (persisted in state.json) and its output."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from dstack.agent.fsutil import write_json_atomic
from dstack.agent.jobs.spec import JobSpec
from dstack.agent.logstore import LogStore

PREPARING = "preparing"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
TERMINATED = "terminated"
ACTIVE_STATUSES = (PREPARING, RUNNING)
FINAL_STATUSES = (DONE, FAILED, TERMINATED)

SPEC_FILE = "spec.json"
STATE_FILE = "state.json"
CODE_DIR = "code"
SCRIPT_FILE = "script.sh"


@dataclass(frozen=True)
class JobState:
    id: str
    run_name: str
    status: str
    created_at: float
    # Unique per job, put in its processes' environment so that they can be found even after they left
    # the process group (and never confused with another agent's job of the same id).
    marker: str
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    pid: Optional[int] = None
    pgid: Optional[int] = None
    # What the agent is doing for the job now ("Pulling image x", "Using cached build ..."), for the run's
    # status; and a stable code for why it failed where the reason alone is not enough (build_failed, ...).
    message: Optional[str] = None
    reason_code: Optional[str] = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_record(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: Dict[str, Any]) -> JobState:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class StopRequest:
    reason: str
    abort: bool
    grace_seconds: float


class Job:
    """A job's folder, state and output. State changes go through `update`, under `lock`."""

    def __init__(
        self, spec: JobSpec, folder: Path, state: JobState, on_change: Optional[Callable[[str], None]] = None
    ) -> None:
        self.spec = spec
        self.folder = folder
        self.logs = LogStore(folder, None if on_change is None else lambda: on_change(spec.id))
        # Guards state, stop_request and the start of the job's processes (so a stop never misses them).
        self.lock = threading.RLock()
        self._state = state
        self.stop_request: Optional[StopRequest] = None
        self.finished = threading.Event()
        if state.is_final:
            self.finished.set()

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def code_dir(self) -> Path:
        return self.folder / CODE_DIR

    @property
    def script_path(self) -> Path:
        return self.folder / SCRIPT_FILE

    def update(self, **changes: Any) -> JobState:
        """Change the state and wake everyone waiting on the job's output; a final state is persisted.

        What happens in between (running, a pid, "Pulling image x") is not written to disk: recovery after
        an agent restart needs only what the job was created with (its marker) and whether it ended, and
        every file write costs short jobs more than anything else the agent does for them.
        """
        with self.lock:
            new_state = replace(self._state, **changes)
            if new_state.is_final and new_state.finished_at is None:
                new_state = replace(new_state, finished_at=time.time())
            if new_state.is_final:
                write_json_atomic(self.folder / STATE_FILE, new_state.to_record())
            self._state = new_state
        if new_state.is_final:
            self.logs.close()
            self.finished.set()
        self.logs.notify()
        return new_state

    def to_json(self) -> Dict[str, Any]:
        # Status is read before the log size: a reader that sees a final status then also sees all output.
        state = self._state
        return {
            "id": state.id,
            "run_name": state.run_name,
            "status": state.status,
            "exit_code": state.exit_code,
            "reason": state.reason,
            "reason_code": state.reason_code,
            "message": state.message,
            "created_at": state.created_at,
            "started_at": state.started_at,
            "finished_at": state.finished_at,
            "log_size": self.logs.size(),
            "pid": state.pid,
        }
