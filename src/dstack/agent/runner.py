"""Runs jobs: prepare (unpack, environment), build, start through the driver, publish output, stop,
finish, and take over the jobs an earlier agent left running.

Driver-agnostic: everything specific to how processes are started lives behind the `Driver` protocol; a
job with an image runs in a container (DockerDriver), any other as processes (ProcessDriver). The
environment (a venv, an image, a cached build) comes from `EnvironmentManager`; a build runs as a phase of
its own, with its output in the job's output, before the commands.

Jobs outlive their agent (see drivers/base.py): after a restart or an upgrade, `recover` adopts every job
whose main phase still runs and carries on as if it had started it (output, stop, max duration, the end),
records how the others ended, and ends whatever they left. Only a job cut short while it was being
prepared (code, environment, build) cannot be resumed: it fails, with its leftovers stopped.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from dstack.agent.codestore import CodeStore
from dstack.agent.drivers.base import (
    EXIT_UNKNOWN,
    PHASE_BUILD,
    PHASE_MAIN,
    ContainerSpec,
    Driver,
    JobHandle,
    LaunchSpec,
    process_shell,
)
from dstack.agent.drivers.process import EXIT_FILE, MAIN_PID_FILE
from dstack.agent.environments.manager import (
    BUILD_FAILED,
    EnvironmentManager,
    SetupCancelled,
    SetupError,
    TaskEnvironment,
)
from dstack.agent.environments.venvs import Venv
from dstack.agent.fsutil import read_json, write_json_atomic
from dstack.agent.host import find_nvcc
from dstack.agent.jobenv import host_environment
from dstack.agent.jobs.job import ACTIVE_STATUSES, DONE, FAILED, RUNNING, TERMINATED, Job, StopRequest
from dstack.agent.output import OutputWatcher
from dstack.agent.procutil import JOB_MARKER_ENV, started_at
from dstack.agent.script import render_script
from dstack.agent.utilization import start_utilization_watch
from dstack.agent.workspace import (
    HOSTFILE_MOUNT,
    HOSTFILE_NAME,
    Workspace,
    WorkspaceBuilder,
    WorkspaceError,
)

log = logging.getLogger(__name__)

REASON_STOPPED = "Stopped by request"
REASON_ABORTED = "Aborted"
REASON_MAX_DURATION = "Max duration exceeded"
REASON_AGENT_STOPPED = "Agent stopped"
REASON_AGENT_RESTARTED = "The agent restarted while the job was being prepared"
REASON_EXIT_UNKNOWN = (
    "The agent restarted while the job ran, and the job ended without recording its exit status "
    "(killed by SIGKILL?)"
)
AGENT_LOST = "agent_lost"  # reason_code: the job's end could not be seen by any agent
STOP_FILE = "stop.json"  # a stop under way, for an agent that takes the job over
CODE_MOUNT = "/workflow"  # where a container sees the job's code (dstack's own convention)
BUILD_SCRIPT_FILE = "build.sh"


class PrepareError(Exception):
    """The job could not be prepared; the message is the job's reason (one sentence)."""

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code


class Runner:
    def __init__(
        self,
        driver: Driver,
        code_store: CodeStore,
        base_env: Mapping[str, str],
        environments: EnvironmentManager,
        pass_env: Iterable[str] = (),
        watcher: Optional[OutputWatcher] = None,
    ) -> None:
        self._process_driver = driver
        self._watcher = watcher or OutputWatcher()
        self._code_store = code_store
        self._environments = environments
        # Jobs see only the allowed host variables (never the agent's token, its DSTACK_AGENT_* settings,
        # nor anything else its starter had).
        self._base_env = host_environment(base_env, pass_env)
        self._workspaces = WorkspaceBuilder(environments.children, code_store, self._base_env)
        self._handles: Dict[str, Tuple[Driver, JobHandle]] = {}
        self._closed = False

    def find_build(
        self, python: Optional[str], image: Optional[str], inputs: Dict[str, Any]
    ) -> Optional[str]:
        """The key of this host's cached build for a plan's build inputs, if it has one."""
        return self._environments.find_build(python, image, inputs)

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
            entry = self._handles.get(job.id)
        try:  # rare, and what lets an agent that takes the job over finish the stop
            write_json_atomic(job.folder / STOP_FILE, {"reason": reason, "abort": abort, "grace": grace})
        except OSError as e:
            log.warning("Could not record the stop of job %s: %s", job.id, e)
        log.info("Stopping job %s (%s)", job.id, reason)
        if entry is not None:
            # Not under the lock and not in the caller's thread: a graceful stop can take the whole grace.
            driver, handle = entry
            threading.Thread(
                target=driver.stop, args=(handle, grace, abort), name=f"stop-{job.id}", daemon=True
            ).start()
        return True

    def recover(self, jobs: List[Job]) -> None:
        """Take over the jobs an earlier agent left unfinished (see the module's docstring)."""
        orphans = [job for job in jobs if job.state.status in ACTIVE_STATUSES]
        adopted: List[Tuple[Job, Driver, JobHandle]] = []
        threads = [
            threading.Thread(
                target=self._recover_one, args=(job, adopted), name=f"recover-{job.id}", daemon=True
            )
            for job in orphans
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for job, driver, handle in adopted:
            threading.Thread(
                target=self._run_safely,
                args=(job, lambda j=job, d=driver, h=handle: self._carry_on(j, d, h)),
                name=f"job-{job.id}",
                daemon=True,
            ).start()
        if not adopted:
            # No job runs now: builds that were cut short or superseded can go.
            self._environments.collect_garbage()

    def _recover_one(self, job: Job, adopted: List[Tuple[Job, Driver, JobHandle]]) -> None:
        job.stop_request = _read_stop(job)
        try:
            driver: Driver = self._environments.docker() if job.spec.image else self._process_driver
        except SetupError as e:
            log.warning("Could not look for the containers of job %s: %s", job.id, e)
            driver = self._process_driver
        handle = driver.adopt(job.state.marker, job.folder, job.logs)
        if handle is not None:
            log.info("Job %s is still running (pid %d): taking it over", job.id, handle.pid)
            with job.lock:
                self._handles[job.id] = (driver, handle)
            adopted.append((job, driver, handle))
            return
        exit_code = driver.ended(job.state.marker, job.folder, job.logs)
        log.info("Job %s ended while no agent watched it; ending what is left of it", job.id)
        self._end_leftovers(job)
        job.logs.sync()
        if exit_code is not None:
            self._finish_started(job, exit_code)
        elif (job.folder / MAIN_PID_FILE).exists() or (job.spec.image and job.script_path.exists()):
            self._finish_started(job, EXIT_UNKNOWN)
        else:
            job.update(status=FAILED, reason=REASON_AGENT_RESTARTED, reason_code=AGENT_LOST)

    def _end_leftovers(self, job: Job) -> None:
        # A build runs as processes even for an image job if Docker went away; look for both.
        self._process_driver.recover(job.state.marker, job.spec.stop_grace_seconds)
        if job.spec.image is not None:
            try:
                self._environments.docker().recover(job.state.marker, job.spec.stop_grace_seconds)
            except SetupError as e:
                log.warning("Could not look for the containers of job %s: %s", job.id, e)

    def _carry_on(self, job: Job, driver: Driver, handle: JobHandle) -> None:
        """Follow an adopted job to its end, as `_run_in` does for one it started."""
        began = started_at(handle.pid) or time.time()
        job.update(status=RUNNING, started_at=began, pid=handle.pid, pgid=handle.pgid, message=None)
        stop = job.stop_request
        if stop is not None:  # the earlier agent was stopping it: finish the stop
            threading.Thread(
                target=driver.stop, args=(handle, stop.grace_seconds, stop.abort), daemon=True
            ).start()
        max_duration = job.spec.max_duration
        remaining = None if max_duration is None else max(0.0, began + max_duration - time.time())
        try:
            exit_code = self._follow(job, driver, handle, None if remaining is None else int(remaining) or 1)
        finally:
            driver.release(handle)
        self._finish_started(job, exit_code)

    def _run_safely(self, job: Job, body: Optional[Callable[[], None]] = None) -> None:
        try:
            (body or (lambda: self._run(job)))()
        except Exception:
            log.exception("Job %s failed in the agent", job.id)
            entry = self._handles.get(job.id)
            if entry is not None:
                driver, handle = entry
                driver.stop(handle, 0.0, abort=True)  # an unsupervised job must not keep running
                driver.release(handle)
            if not job.state.is_final:
                job.update(status=FAILED, reason="The agent failed while running the job; see its log")
        finally:
            self._handles.pop(job.id, None)

    def _run(self, job: Job) -> None:
        try:
            workspace = self._prepare(job)
            env = self._environments.prepare(
                job.spec,
                workspace.cwd,
                job.code_dir,
                notify=lambda message: job.update(message=message),
                cancelled=lambda: job.stop_request is not None,
            )
        except PrepareError as e:
            self._finish_unstarted(job, str(e), e.code)
            return
        except SetupError as e:
            self._finish_unstarted(job, str(e), e.code)
            return
        except SetupCancelled:
            self._finish_unstarted(job, REASON_STOPPED)
            return
        if job.state.message is not None:
            job.update(message=None)  # "Pulling image x" is over
        try:
            self._run_in(job, env, workspace)
        finally:
            env.close()

    def _run_in(self, job: Job, env: TaskEnvironment, workspace: Workspace) -> None:
        try:
            driver: Driver = self._environments.docker() if env.in_container else self._process_driver
        except SetupError as e:
            self._finish_unstarted(job, str(e), e.code)
            return
        if env.build is not None and not self._build(job, env, workspace, driver):
            return
        spec = job.spec
        # A job with neither python nor image (only an agent's API user sends one) has no environment to
        # build into: its build commands simply run first, every time.
        commands = spec.commands if spec.python or spec.image else spec.build + spec.commands
        # A container's end is the daemon's to tell; a bash script records its own for a later agent.
        records = not env.in_container and spec.shell in (None, "bash") and not spec.entrypoint
        job.script_path.write_text(
            render_script(commands, job.folder / EXIT_FILE if records else None), encoding="utf-8"
        )
        argv = spec.entrypoint + spec.commands if spec.entrypoint else None
        if spec.image is not None and workspace.copies and not commands and argv is None:
            self._finish_unstarted(
                job,
                "Files with an absolute or ~/ target are placed by the task's commands' shell; give commands",
            )
            return
        launch = self._launch(
            job, env, workspace, job.script_path, use_image_command=not commands and argv is None, argv=argv
        )
        if env.note:
            _announce(job, env.note)
        handle = self._start(job, driver, launch, main=True)
        if handle is None:
            return
        log.debug("Job %s started (pid %d)", job.id, handle.pid)
        watch = start_utilization_watch(job, self.stop)
        try:
            exit_code = self._follow(job, driver, handle, spec.max_duration)
        finally:
            if watch is not None:
                watch.stop()
            driver.release(handle)
        # Its processes are gone: the run's venv copy is let go before the job is said to be over, so a
        # run submitted on seeing it end gets the copy (if it was left unchanged).
        env.close()
        self._finish_started(job, exit_code)

    def _build(self, job: Job, env: TaskEnvironment, workspace: Workspace, driver: Driver) -> bool:
        """Run the build phase and cache its result; False if the job ended there."""
        script = job.folder / BUILD_SCRIPT_FILE
        script.write_text(render_script(job.spec.build), encoding="utf-8")
        if env.build is not None:
            _announce(job, env.build.announcement)
        handle = self._start(
            job, driver, self._launch(job, env, workspace, script, phase=PHASE_BUILD), main=False
        )
        if handle is None:
            self._environments.build_failed(env)
            return False
        log.info("Job %s: build started (pid %d)", job.id, handle.pid)
        try:
            exit_code = self._follow(job, driver, handle, None)
            if job.stop_request is not None:
                self._environments.build_failed(env)
                self._finish_unstarted(job, job.stop_request.reason)
                return False
            if exit_code != 0:
                self._environments.build_failed(env)
                job.update(
                    status=FAILED,
                    reason=f"The build commands failed with exit code {exit_code}",
                    reason_code=BUILD_FAILED,
                )
                log.info("Job %s: build failed (exit code %d)", job.id, exit_code)
                return False
            self._environments.build_succeeded(env, getattr(handle, "container_id", None))
        except SetupError as e:
            self._finish_unstarted(job, str(e), e.code)
            return False
        finally:
            driver.release(handle)
            self._handles.pop(job.id, None)
        return True

    def _start(self, job: Job, driver: Driver, launch: LaunchSpec, main: bool) -> Optional[JobHandle]:
        with job.lock:
            if job.stop_request is not None:
                self._finish_unstarted(job, job.stop_request.reason)
                return None
            try:
                handle = driver.start(launch)
            except OSError as e:
                what = "the job" if main else "the build"
                self._finish_unstarted(job, f"Could not start {what}: {e.strerror or e}")
                return None
            self._handles[job.id] = (driver, handle)
            if main:
                job.update(
                    status=RUNNING, started_at=time.time(), pid=handle.pid, pgid=handle.pgid, message=None
                )
        return handle

    def _follow(self, job: Job, driver: Driver, handle: JobHandle, max_duration: Optional[int]) -> int:
        """Publish the output until the main process ends, then end what it left; its exit code."""
        self._watcher.watch(job.logs)
        try:
            exit_code = self._wait(job, driver, handle, max_duration)
            # Whatever the commands left in the background must not outlive the job.
            stop = job.stop_request
            driver.stop(
                handle,
                stop.grace_seconds if stop else job.spec.stop_grace_seconds,
                abort=bool(stop and stop.abort),
            )
        finally:
            self._watcher.unwatch(job.logs)  # every byte is published before the job's end is
        return exit_code

    def _wait(self, job: Job, driver: Driver, handle: JobHandle, max_duration: Optional[int]) -> int:
        deadline = None if max_duration is None else time.monotonic() + max_duration
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            exit_code = driver.wait(handle, timeout)
            if exit_code is not None:
                return exit_code
            self.stop(job, abort=False, grace_seconds=None, reason=REASON_MAX_DURATION)
            deadline = None

    def _finish_unstarted(self, job: Job, failure: str, code: Optional[str] = None) -> None:
        stop = job.stop_request
        if stop is not None:
            job.update(status=TERMINATED, reason=stop.reason)
        else:
            job.update(status=FAILED, reason=failure, reason_code=code)
        log.info("Job %s ended before starting: %s", job.id, job.state.reason)

    def _finish_started(self, job: Job, exit_code: int) -> None:
        with job.lock:
            stop = job.stop_request
            if stop is not None:
                code = None if exit_code == EXIT_UNKNOWN else exit_code
                job.update(status=TERMINATED, exit_code=code, reason=stop.reason)
            elif exit_code == 0:
                job.update(status=DONE, exit_code=0)
            elif exit_code == EXIT_UNKNOWN:
                job.update(status=FAILED, reason=REASON_EXIT_UNKNOWN, reason_code=AGENT_LOST)
            else:
                job.update(status=FAILED, exit_code=exit_code, reason=_exit_reason(exit_code))
        log.info("Job %s is %s (exit code %s)", job.id, job.state.status, job.state.exit_code)

    def _prepare(self, job: Job) -> Workspace:
        """Lay out the job's code, repo, files and volumes; returns them (with its working directory)."""
        if job.spec.user is not None and job.spec.image is None:
            raise PrepareError("A task without image runs as the agent's user; user needs image")
        try:
            return self._workspaces.build(
                job.spec,
                job.folder,
                job.code_dir,
                announce=lambda line: _announce(job, line),
                cancelled=lambda: job.stop_request is not None,
                notify=lambda message: job.update(message=message),
            )
        except WorkspaceError as e:
            raise PrepareError(str(e)) from e

    def _launch(
        self,
        job: Job,
        env: TaskEnvironment,
        workspace: Workspace,
        script: Path,
        use_image_command: bool = False,
        argv: Optional[List[str]] = None,
        phase: str = PHASE_MAIN,
    ) -> LaunchSpec:
        spec = job.spec
        cwd = workspace.cwd
        container = None
        if env.image is not None:
            relative = os.path.relpath(cwd, job.code_dir)
            default_workdir = CODE_MOUNT if relative == "." else posixpath.join(CODE_MOUNT, relative)
            container = ContainerSpec(
                image=env.image,
                code_dir=job.code_dir,
                code_mount=CODE_MOUNT,
                workdir=spec.container_workdir or default_workdir,
                use_image_command=use_image_command,
                argv=argv,
                shell=spec.shell,
                user=spec.user,
                privileged=spec.privileged,
                mounts=list(workspace.mounts),
                copies=list(workspace.copies),
            )
        elif argv is None:
            # The run's arguments are the script's positional parameters: `${{ run.args }}` is "$@".
            argv = [*process_shell(spec.shell), str(script), *spec.args]
        return LaunchSpec(
            job_id=spec.id,
            marker=job.state.marker,
            script=script,
            cwd=cwd,
            env=self._job_environment(job, env.venv, in_container=container is not None, cwd=cwd),
            logs=job.logs,
            resources=spec.resources,
            container=container,
            argv=argv,
            args=list(spec.args),
            phase=phase,
        )

    def _job_environment(
        self, job: Job, venv: Optional[Venv], in_container: bool, cwd: Optional[Path] = None
    ) -> Dict[str, str]:
        # A container has its image's own environment: the host's must not leak into it (PATH least).
        env = {} if in_container else dict(self._base_env)
        # Before the job's own env, so that a task may still turn it off.
        env["PYTHONUNBUFFERED"] = "1"
        if not in_container and cwd is not None:
            env["DSTACK_WORKING_DIR"] = str(cwd)  # a container's start script sets its own
        if job.spec.nvcc and not in_container:
            nvcc = find_nvcc()
            if nvcc is not None:  # `nvcc: true`: the compiler's folder on PATH (a venv goes before it)
                env["PATH"] = os.path.dirname(nvcc) + os.pathsep + env.get("PATH", os.defpath)
        env.update(job.spec.env)
        if venv is not None:
            # After the job's env: `python` and `pip` must be the venv's whatever PATH the task set.
            env.pop("PYTHONHOME", None)
            env.update(venv.environment(env.get("PATH") or os.defpath))
        # After it, so that a task cannot hide from (or pose as) another job.
        gpus = ",".join(str(index) for index in job.spec.resources.gpus)
        if not in_container or not gpus:
            # A task sees only the GPUs it holds (none, if it holds none). A container is given its GPUs
            # by the daemon and numbers them from 0 itself.
            env["CUDA_VISIBLE_DEVICES"] = gpus
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # number devices as nvidia-smi does, as the indices are
            env["NVIDIA_VISIBLE_DEVICES"] = gpus if gpus else "void"
        if job.spec.mpi_hostfile is not None:
            env["DSTACK_MPI_HOSTFILE"] = HOSTFILE_MOUNT if in_container else str(job.folder / HOSTFILE_NAME)
        env["DSTACK_RUN_NAME"] = job.spec.run_name
        env["DSTACK_JOB_ID"] = job.spec.id
        env[JOB_MARKER_ENV] = job.state.marker
        return env


def _read_stop(job: Job) -> Optional[StopRequest]:
    try:
        data = read_json(job.folder / STOP_FILE)
        return StopRequest(
            reason=str(data["reason"]), abort=bool(data["abort"]), grace_seconds=float(data["grace"])
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("Ignoring the unreadable stop request of job %s: %s", job.id, e)
        return None


def _announce(job: Job, line: str) -> None:
    # Only between phases, when no output reader is appending to the job's log.
    job.logs.append((line + "\n").encode("utf-8"), time.time())


def _exit_reason(exit_code: int) -> str:
    if exit_code > 128:
        return f"The commands were killed by signal {exit_code - 128} (exit code {exit_code})"
    return f"The commands failed with exit code {exit_code}"
