"""Runs jobs: prepare (unpack, script), start through the driver, collect output, stop, finish, recover.

Driver-agnostic: everything specific to how processes are started lives behind the `Driver` protocol.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from typing import Dict, List, Mapping, Optional

from dstack.agent.codestore import CodeStore
from dstack.agent.drivers.base import Driver, JobHandle, LaunchSpec
from dstack.agent.fsutil import is_inside
from dstack.agent.jobs.job import ACTIVE_STATUSES, DONE, FAILED, RUNNING, TERMINATED, Job, StopRequest
from dstack.agent.output import OutputReader
from dstack.agent.procutil import JOB_MARKER_ENV
from dstack.agent.script import render_script
from dstack.agent.settings import TOKEN_ENV
from dstack.agent.unpack import UnpackError, unpack_code

log = logging.getLogger(__name__)

REASON_STOPPED = "Stopped by request"
REASON_ABORTED = "Aborted"
REASON_MAX_DURATION = "Max duration exceeded"
REASON_AGENT_STOPPED = "Agent stopped"
REASON_AGENT_RESTARTED = "Agent restarted while the job was running"
# After the job's processes are gone, its pipe reaches EOF at once; this only bounds the wait for a
# process that escaped the job's tree and still holds the pipe open.
_DRAIN_TIMEOUT_SECONDS = 5.0


class PrepareError(Exception):
    """The job could not be prepared; the message is the job's reason (one sentence)."""


class Runner:
    def __init__(self, driver: Driver, code_store: CodeStore, base_env: Mapping[str, str]) -> None:
        self._driver = driver
        self._code_store = code_store
        self._base_env = {name: value for name, value in base_env.items() if name != TOKEN_ENV}
        self._handles: Dict[str, JobHandle] = {}
        self._closed = False

    def close(self) -> None:
        """Start no more jobs (the agent is shutting down); jobs submitted from now on end at once."""
        self._closed = True

    def launch(self, job: Job) -> None:
        """Prepare and run the job in a worker thread; returns at once."""
        if self._closed:
            job.update(status=TERMINATED, reason=REASON_AGENT_STOPPED)
            return
        threading.Thread(target=self._run_safely, args=(job,), name=f"job-{job.id}", daemon=True).start()

    def stop(self, job: Job, abort: bool, grace_seconds: Optional[float], reason: str) -> bool:
        """Ask the job to stop; returns False if it had finished already.

        A stop of a preparing job keeps it from starting. A later abort escalates a graceful stop.
        """
        with job.lock:
            if job.state.is_final:
                return False
            current = job.stop_request
            if current is not None and (current.abort or not abort):
                return True
            grace = job.spec.stop_grace_seconds if grace_seconds is None else max(0.0, grace_seconds)
            job.stop_request = StopRequest(reason=reason, abort=abort, grace_seconds=grace)
            handle = self._handles.get(job.id)
        log.info("Stopping job %s (%s)", job.id, reason)
        if handle is not None:
            # Not under the lock and not in the caller's thread: a graceful stop can take the whole grace.
            threading.Thread(
                target=self._driver.stop, args=(handle, grace, abort), name=f"stop-{job.id}", daemon=True
            ).start()
        return True

    def recover(self, jobs: List[Job]) -> None:
        """Fail the jobs an earlier agent left unfinished and end their surviving processes."""
        orphans = [job for job in jobs if job.state.status in ACTIVE_STATUSES]
        threads = [
            threading.Thread(target=self._recover_one, args=(job,), name=f"recover-{job.id}", daemon=True)
            for job in orphans
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _recover_one(self, job: Job) -> None:
        log.info("Job %s was %s when the agent stopped; ending what is left of it", job.id, job.state.status)
        try:
            self._driver.recover(job.state.marker, job.spec.stop_grace_seconds)
        finally:
            job.update(status=FAILED, reason=REASON_AGENT_RESTARTED)

    def _run_safely(self, job: Job) -> None:
        try:
            self._run(job)
        except Exception:
            log.exception("Job %s failed in the agent", job.id)
            handle = self._handles.get(job.id)
            if handle is not None:
                self._driver.stop(handle, 0.0, abort=True)  # an unsupervised job must not keep running
            if not job.state.is_final:
                job.update(status=FAILED, reason="The agent failed while running the job; see its log")
        finally:
            self._handles.pop(job.id, None)

    def _run(self, job: Job) -> None:
        try:
            launch = self._prepare(job)
        except PrepareError as e:
            self._finish_unstarted(job, str(e))
            return
        with job.lock:
            if job.stop_request is not None:
                self._finish_unstarted(job, job.stop_request.reason)
                return
            try:
                handle = self._driver.start(launch)
            except OSError as e:
                self._finish_unstarted(job, f"Could not start the job: {e.strerror or e}")
                return
            self._handles[job.id] = handle
            job.update(status=RUNNING, started_at=time.time(), pid=handle.pid, pgid=handle.pgid)
        log.info("Job %s started (pid %d)", job.id, handle.pid)
        reader = OutputReader(handle.output_fd, job.logs, name=f"output-{job.id}")
        reader.start()
        try:
            exit_code = self._wait(job, handle)
            # Whatever the commands left in the background must not outlive the job.
            stop = job.stop_request
            self._driver.stop(
                handle,
                stop.grace_seconds if stop else job.spec.stop_grace_seconds,
                abort=bool(stop and stop.abort),
            )
            reader.finish(_DRAIN_TIMEOUT_SECONDS)
        finally:
            os.close(handle.output_fd)
        self._finish_started(job, exit_code)

    def _wait(self, job: Job, handle: JobHandle) -> int:
        deadline = None if job.spec.max_duration is None else time.monotonic() + job.spec.max_duration
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            exit_code = self._driver.wait(handle, timeout)
            if exit_code is not None:
                return exit_code
            self.stop(job, abort=False, grace_seconds=None, reason=REASON_MAX_DURATION)
            deadline = None

    def _finish_unstarted(self, job: Job, failure: str) -> None:
        stop = job.stop_request
        if stop is not None:
            job.update(status=TERMINATED, reason=stop.reason)
        else:
            job.update(status=FAILED, reason=failure)
        log.info("Job %s ended before starting: %s", job.id, job.state.reason)

    def _finish_started(self, job: Job, exit_code: int) -> None:
        with job.lock:
            stop = job.stop_request
            if stop is not None:
                job.update(status=TERMINATED, exit_code=exit_code, reason=stop.reason)
            elif exit_code == 0:
                job.update(status=DONE, exit_code=0)
            else:
                job.update(status=FAILED, exit_code=exit_code, reason=_exit_reason(exit_code))
        log.info("Job %s is %s (exit code %d)", job.id, job.state.status, exit_code)

    def _prepare(self, job: Job) -> LaunchSpec:
        spec = job.spec
        shutil.rmtree(job.code_dir, ignore_errors=True)
        job.code_dir.mkdir()
        if spec.code_hash is not None:
            archive = self._code_store.path(spec.code_hash)
            if not archive.is_file():
                raise PrepareError(f"Code {spec.code_hash} has not been uploaded")
            try:
                unpack_code(archive, job.code_dir, cancelled=lambda: job.stop_request is not None)
            except UnpackError as e:
                raise PrepareError(f"Could not unpack the code: {e}") from e
        cwd = job.code_dir / spec.working_dir if spec.working_dir else job.code_dir
        try:
            cwd.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PrepareError(
                f"Could not create the working directory {spec.working_dir}: {e.strerror}"
            ) from e
        # The code's own symlinks could bend the path; they are checked on unpack, and this makes sure.
        if not is_inside(cwd, job.code_dir):
            raise PrepareError(f"The working directory {spec.working_dir} leads outside the code folder")
        job.script_path.write_text(render_script(spec.build + spec.commands), encoding="utf-8")
        return LaunchSpec(
            job_id=spec.id,
            marker=job.state.marker,
            script=job.script_path,
            cwd=cwd,
            env=self._job_environment(job),
            resources=spec.resources,
        )

    def _job_environment(self, job: Job) -> Dict[str, str]:
        env = dict(self._base_env)
        # Before the job's own env, so that a task may still turn it off.
        env["PYTHONUNBUFFERED"] = "1"
        env.update(job.spec.env)
        # After it, so that a task cannot hide from (or pose as) another job.
        gpus = ",".join(str(index) for index in job.spec.resources.gpus)
        # A task sees only the GPUs it holds (none, if it holds none).
        env["CUDA_VISIBLE_DEVICES"] = gpus
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # number devices as nvidia-smi does, which the indices are
        env["NVIDIA_VISIBLE_DEVICES"] = gpus if gpus else "void"
        env["DSTACK_RUN_NAME"] = job.spec.run_name
        env["DSTACK_JOB_ID"] = job.spec.id
        env[JOB_MARKER_ENV] = job.state.marker
        env.pop(TOKEN_ENV, None)
        return env


def _exit_reason(exit_code: int) -> str:
    if exit_code > 128:
        return f"The commands were killed by signal {exit_code - 128} (exit code {exit_code})"
    return f"The commands failed with exit code {exit_code}"
