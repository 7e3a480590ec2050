"""All jobs of this agent, in memory and on disk (DIR/jobs/<id>/)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from dstack.agent.fsutil import make_private_dir, read_json, spread_subfolders, write_json_atomic
from dstack.agent.jobs.job import PREPARING, SPEC_FILE, STATE_FILE, Job, JobState
from dstack.agent.jobs.spec import JobSpec, SpecError, is_job_id, parse_job_spec
from dstack.agent.logstore import create_log

log = logging.getLogger(__name__)

# '~' cannot start a job id, so a folder being deleted is never mistaken for a job.
_TRASH_PREFIX = "~deleted-"
# Deleted folders are removed once the agent has been quiet this long (no job created or deleted), so that
# a burst of short jobs does not also pay for unlinking every earlier one's files while it runs; at most
# _SWEEP_EVERY later, and at once past _SWEEP_BACKLOG folders, so that a steady load cannot pile them up.
_SWEEP_QUIET_SECONDS = 0.5
_SWEEP_EVERY_SECONDS = 5.0
_SWEEP_BACKLOG = 2000


class JobConflictError(Exception):
    """The request conflicts with the job's current state; one sentence for the client."""


class JobRegistry:
    def __init__(
        self,
        jobs_dir: Path,
        on_change: Optional[Callable[[str], None]] = None,
        before_removal: Optional[Callable[[Job, Path], object]] = None,
        defer_removal: bool = False,
    ) -> None:
        self.jobs_dir = jobs_dir
        self._on_change = on_change  # told the id of every job that changed (its state, output, or end)
        # Given a deleted job and where its folder is now, before that is removed: it may take parts out.
        self._before_removal = before_removal
        make_private_dir(jobs_dir)
        spread_subfolders(jobs_dir)
        self._lock = threading.Lock()
        self._jobs: Dict[str, Job] = {}
        self._creating: Dict[str, Job] = {}  # reserved, their files being written
        # What a one-job agent exits on: whether its job came, and how the one collected last ended.
        self.created = 0
        self.last_deleted: Optional[JobState] = None
        self.deleted = threading.Event()  # set once a job was deleted
        self._sweeper = _Sweeper() if defer_removal else None

    def load(self) -> List[Job]:
        """Read every job folder left by earlier agents; unreadable ones are logged and skipped."""
        for trash in self.jobs_dir.glob(_TRASH_PREFIX + "*"):
            # Left by an earlier agent (one that handed over leaves what waited): not on the way to serving.
            if self._sweeper is not None:
                self._sweeper.add(trash)
            else:
                shutil.rmtree(trash, ignore_errors=True)
        for folder in sorted(self.jobs_dir.iterdir()):
            if not folder.is_dir() or not is_job_id(folder.name):
                continue
            try:
                spec = parse_job_spec(read_json(folder / SPEC_FILE))
                state = JobState.from_record(read_json(folder / STATE_FILE))
            except (OSError, ValueError, TypeError, SpecError) as e:
                log.warning("Skipping job folder %s: %s", folder, e)
                continue
            with self._lock:
                self._jobs[spec.id] = Job(spec, folder, state, self._on_change)
        return self.list()

    def create(self, spec: JobSpec) -> Tuple[Job, bool]:
        """Create the job, or return the existing one with the same id and spec: (job, created)."""
        with self._lock:
            existing = self._jobs.get(spec.id) or self._creating.get(spec.id)
            if existing is not None:
                if existing.spec != spec:
                    raise JobConflictError(f"Job {spec.id} already exists with a different spec")
                return existing, False
            folder = self.jobs_dir / spec.id
            state = JobState(
                id=spec.id,
                run_name=spec.run_name,
                status=PREPARING,
                created_at=time.time(),
                marker=uuid.uuid4().hex,
            )
            job = Job(spec, folder, state, self._on_change)
            self._creating[spec.id] = job
        # Files are written outside the lock: submissions of many jobs at once do not queue behind disks.
        try:
            if folder.exists():
                # A folder without a readable state is debris of a crash during an earlier create.
                shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            create_log(folder)  # before the job is announced: a server on this disk links it (see logstore)
            write_json_atomic(folder / SPEC_FILE, spec.to_json())
            write_json_atomic(folder / STATE_FILE, state.to_record())
        except BaseException:
            with self._lock:
                del self._creating[spec.id]
            raise
        with self._lock:
            del self._creating[spec.id]
            self._jobs[spec.id] = job
            self.created += 1
        if self._sweeper is not None:
            self._sweeper.touch()  # deleted folders wait for the next quiet moment
        if self._on_change is not None:
            self._on_change(spec.id)
        return job, True

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> List[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: (job.state.created_at, job.id))

    def active(self) -> List[Job]:
        return [job for job in self.list() if not job.state.is_final]

    def delete(self, job_id: str) -> bool:
        """Remove a finished job and its folder; False if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if not job.state.is_final:
                raise JobConflictError(f"Job {job_id} is {job.state.status}; stop it before deleting it")
            del self._jobs[job_id]
            self.last_deleted = job.state
            self.deleted.set()
            # Renamed under the lock (a new job with this id may be created at once), removed outside it.
            trash = self.jobs_dir / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
            job.folder.rename(trash)
        if self._on_change is not None:
            self._on_change(job_id)
        if self._before_removal is not None:
            self._before_removal(job, trash)
        if self._sweeper is not None:
            self._sweeper.add(trash)
        else:
            shutil.rmtree(trash, ignore_errors=True)
        return True

    def close(self, *, sweep: bool = True) -> None:
        """The agent is exiting: remove every deleted folder still waiting, or with `sweep=False` (a
        hand-over, where the next agent waits for this one) leave them to the next agent."""
        if self._sweeper is not None:
            self._sweeper.close(sweep=sweep)


class _Sweeper:
    """Removes deleted job folders in a thread of its own, in a quiet moment (see _SWEEP_QUIET_SECONDS)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._pending: List[Path] = []
        self._last_change = time.monotonic()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def touch(self) -> None:
        with self._lock:
            self._last_change = time.monotonic()

    def add(self, folder: Path) -> None:
        with self._lock:
            self._pending.append(folder)
            self._last_change = time.monotonic()
            backlog = len(self._pending) >= _SWEEP_BACKLOG
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="job-sweeper", daemon=True)
                self._thread.start()
            self._lock.notify()
        if backlog:
            self._sweep()

    def close(self, *, sweep: bool = True) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if sweep:
            self._sweep()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                first = time.monotonic()
                while not self._closed:
                    now = time.monotonic()
                    quiet_at = self._last_change + _SWEEP_QUIET_SECONDS
                    due_at = min(quiet_at, first + _SWEEP_EVERY_SECONDS)
                    if now >= due_at:
                        break
                    self._lock.wait(due_at - now)
                if self._closed:
                    return  # close() removes what waits, or (a hand-over) leaves it to the next agent
            self._sweep()

    def _sweep(self) -> None:
        with self._lock:
            folders, self._pending = self._pending, []
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
