"""Start-up, lifetime and shutdown of the agent process."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any, List, Optional

from dstack.agent import __version__
from dstack.agent.api import AgentApi
from dstack.agent.codestore import CodeStore
from dstack.agent.drivers.process import ProcessDriver
from dstack.agent.environments.manager import EnvironmentManager
from dstack.agent.events import JobEvents
from dstack.agent.fsutil import make_tree_private, read_json, write_json_atomic
from dstack.agent.httpserver import AgentHTTPServer
from dstack.agent.jobs.job import CODE_DIR
from dstack.agent.jobs.registry import JobRegistry
from dstack.agent.logstore import JOBS_DIR
from dstack.agent.procutil import SUBREAPER
from dstack.agent.reaper import ChildProcesses, become_child_subreaper
from dstack.agent.runner import REASON_AGENT_STOPPED, Runner
from dstack.agent.settings import TOKEN_ENV, AgentSettings, parse_args

log = logging.getLogger("dstack.agent")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_TOKEN = 2
EXIT_ALREADY_RUNNING = 3
AGENT_FILE = "agent.json"
LOCK_FILE = "agent.lock"
_MAIN_LOOP_SECONDS = 0.25
# On shutdown, jobs get their own grace to stop, plus this to drain their output and record their state.
_SHUTDOWN_MARGIN_SECONDS = 15.0


def main(argv: Optional[List[str]] = None) -> int:
    # Whatever the agent writes (job specs with their env, output, code) is its user's only.
    started_with_umask = os.umask(0o077)
    args = parse_args(argv)
    _configure_logging()
    # Popped, so that nothing the agent starts can inherit it; from stdin it is in no environment at all.
    token = os.environ.pop(TOKEN_ENV, "").strip()
    if args.token_stdin:
        # From a remote start over SSH: on stdin, so that no argv or environment on the host shows it.
        token = sys.stdin.readline().strip()
        _detach_stdin()
    if not token:
        return _fail(
            EXIT_NO_TOKEN,
            f"Set the agent's API token in the {TOKEN_ENV} environment variable (or pass it on "
            "standard input with --token-stdin)",
        )
    work_dir = Path(os.path.abspath(args.work_dir))
    try:
        work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_tree_private(work_dir)  # a work folder an older agent made 0755
        lock = _lock_work_dir(work_dir)
    except OSError as e:
        return _fail(EXIT_FAILED, f"Cannot use the work folder {work_dir}: {e.strerror or e}")
    if lock is None:
        return _fail(EXIT_ALREADY_RUNNING, f"Another agent is already running in {work_dir}")
    settings = AgentSettings(
        work_dir=work_dir,
        host=args.host,
        port=args.port,
        idle_exit_seconds=args.idle_exit,
        max_code_bytes=args.max_code_bytes,
        token=token,
        pass_env=tuple(args.pass_env),
        job_umask=started_with_umask if args.job_umask is None else args.job_umask,
        one_job=args.one_job,
        linger_seconds=args.linger,
    )
    try:
        return Agent(settings).run()
    finally:
        lock.close()


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._children = ChildProcesses()
        self._code_store = CodeStore(settings.work_dir / "code")
        self._events = JobEvents()
        self._registry = JobRegistry(
            settings.work_dir / JOBS_DIR,
            self._events.changed,
            # A finished job's copy of the code serves a later job (what it changed undone): see spares.py.
            before_removal=lambda job, folder: self._code_store.spares.recycle(folder / CODE_DIR),
            # A one-job agent exits once its job is deleted: nothing to gain from waiting.
            defer_removal=not settings.one_job,
        )
        environments = EnvironmentManager(settings.work_dir / "envs", self._children, os.environ)
        self._runner = Runner(
            ProcessDriver(self._children, settings.job_umask),
            self._code_store,
            os.environ,
            environments,
            settings.pass_env,
        )
        self._api = AgentApi(
            settings.work_dir,
            self._registry,
            self._runner,
            self._code_store,
            settings.max_code_bytes,
            self._events,
        )
        self._last_activity = time.monotonic()
        self._signals_received = 0
        self._handover = False
        self._exit_code = EXIT_OK

    def run(self) -> int:
        self._install_signal_handlers()
        SUBREAPER["active"] = become_child_subreaper()
        self._children.start_reaping()
        try:
            server = AgentHTTPServer(
                self.settings.host, self.settings.port, self._api.routes(), self.settings.token, self._touch
            )
        except OSError as e:
            return _fail(
                EXIT_FAILED, f"Cannot listen on {self.settings.host}:{self.settings.port}: {e.strerror or e}"
            )
        # A one-job agent's exit ends its allocation (a Slurm job): its shutdown must not wait half a second.
        poll = 0.05 if self.settings.one_job else 0.5
        serving = threading.Thread(target=server.serve_forever, args=(poll,), name="http", daemon=True)
        try:
            self._runner.recover(self._registry.load())
            serving.start()
            host, port = server.server_address[:2]
            self._write_agent_file(str(host), int(port))
            log.info(
                "Agent %s listening on %s port %d, work folder %s",
                __version__,
                host,
                port,
                self.settings.work_dir,
            )
            if self.settings.one_job:
                self._serve_one_job()
            else:
                self._wait_for_exit_request()
        finally:
            if serving.is_alive():  # shutdown() would wait forever for a loop that never ran
                server.shutdown()
            server.server_close()
            if self._handover:
                log.info("Handing the running jobs over to the next agent")
                self._runner.close()
            else:
                self._stop_jobs()
            self._events.close()
            self._registry.close(sweep=not self._handover)
            self._remove_agent_file()
            self._children.stop_reaping()
        log.info("Agent stopped")
        return self._exit_code

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            # Only a counter: a signal handler must not take locks the interrupted code may hold.
            self._signals_received += 1

        def on_handover(signum: int, frame: Optional[FrameType]) -> None:
            # Exit and leave the jobs running: the next agent (an upgrade) takes them over.
            self._handover = True
            self._signals_received += 1

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGUSR1, on_handover)

    def _wait_for_exit_request(self) -> None:
        idle_limit = self.settings.idle_exit_seconds
        while not self._signals_received:
            time.sleep(_MAIN_LOOP_SECONDS)
            if self._registry.active():
                self._touch()
            elif idle_limit and time.monotonic() - self._last_activity >= idle_limit:
                log.info("Exiting: no job and no request for %g seconds", idle_limit)
                return
        log.info("Exiting: asked to %s by a signal", "hand over" if self._handover else "stop")

    def _serve_one_job(self) -> None:
        """--one-job: exit once the server has collected the job (deleted it), or `linger` seconds after it
        ended if nobody does, or after `idle_exit` if no job ever came. A signal (scancel, a time limit)
        stops the job gracefully — a second one at once — and the agent still waits, so the server can read
        its last output and how it ended. The exit code is the job's, so the allocation's own record (e.g.
        Slurm's ExitCode) tells how the task ended even if the server never asked."""
        ended_at = None
        handled = 0
        started = time.monotonic()
        while True:
            self._registry.deleted.wait(_MAIN_LOOP_SECONDS)  # woken at once when the job is collected
            jobs = self._registry.list()
            if not jobs:
                collected = self._registry.last_deleted
                if collected is not None:
                    self._exit_code = _job_exit_code(collected.status, collected.exit_code)
                    log.info("Exiting: the server collected job %s", collected.id)
                    return
                if self._registry.created:  # created, then gone without a delete: nothing left to serve
                    return
                if self._signals_received:
                    log.info("Exiting: asked to stop by a signal before any job came")
                    self._exit_code = EXIT_FAILED
                    return
                idle = self.settings.idle_exit_seconds
                if idle and time.monotonic() - started >= idle:
                    log.info("Exiting: no job came within %g seconds", idle)
                    self._exit_code = EXIT_FAILED
                    return
                continue
            self._registry.deleted.clear()  # (a job other than the one collected is still here)
            job = jobs[0]
            state = job.state
            if state.is_final:
                self._exit_code = _job_exit_code(state.status, state.exit_code)
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at >= self.settings.linger_seconds:
                    log.info("Exiting: nobody collected job %s", job.id)
                    return
            elif self._signals_received > handled:
                abort = handled > 0
                self._runner.stop(
                    job, abort=abort, grace_seconds=0 if abort else None, reason=REASON_AGENT_STOPPED
                )
            handled = self._signals_received

    def _stop_jobs(self) -> None:
        """Stop running jobs gracefully (the host is going away); a second signal aborts them."""
        self._runner.close()
        jobs = self._registry.active()
        if not jobs:
            return
        signals_seen = self._signals_received
        for job in jobs:
            self._runner.stop(job, abort=False, grace_seconds=None, reason=REASON_AGENT_STOPPED)
        longest_grace = max(job.spec.stop_grace_seconds for job in jobs)
        deadline = time.monotonic() + longest_grace + _SHUTDOWN_MARGIN_SECONDS
        while time.monotonic() < deadline and not all(job.finished.is_set() for job in jobs):
            if self._signals_received > signals_seen:
                signals_seen = self._signals_received
                for job in jobs:
                    self._runner.stop(job, abort=True, grace_seconds=0, reason=REASON_AGENT_STOPPED)
            time.sleep(_MAIN_LOOP_SECONDS)
        unfinished = [job.id for job in jobs if not job.finished.is_set()]
        if unfinished:
            log.warning("Jobs %s did not finish before the agent exited", ", ".join(unfinished))

    def _write_agent_file(self, host: str, port: int) -> None:
        write_json_atomic(
            self.settings.work_dir / AGENT_FILE,
            {
                "pid": os.getpid(),
                "host": host,
                "port": port,
                "version": __version__,
                "started_at": time.time(),
            },
        )

    def _remove_agent_file(self) -> None:
        path = self.settings.work_dir / AGENT_FILE
        try:
            if read_json(path).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def _detach_stdin() -> None:
    # The SSH session that started the agent must not wait for it: let go of its stdin.
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    except OSError:
        pass


def _job_exit_code(status: str, exit_code: Optional[int]) -> int:
    if exit_code is not None and 0 <= exit_code <= 255:
        return exit_code
    return EXIT_OK if status == "done" else EXIT_FAILED


def _lock_work_dir(work_dir: Path) -> Optional[IO[Any]]:
    """Hold an exclusive lock on DIR/agent.lock for the life of the process; None if another agent has it."""
    lock = open(work_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open until the process exits
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # One event, one line, even with a traceback: logs stay greppable and line-oriented tools work.
        return super().format(record).replace("\n", " | ")


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dstack.agent")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code
