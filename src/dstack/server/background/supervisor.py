"""One supervisor per placed job: hand it to its agent, mirror its output, follow its status, stop it on
request, and record how it ended. It holds the job's row lease the whole time and renews it.

A backend with a launch step (Slurm) is asked first to start the job's allocation and agent (`_launch`):
the run shows `pending` with the backend's reason meanwhile, a stop ends the launch at once, and every end
asks the backend to release the job before it is recorded (its allocation is gone by then).

Order matters for readers: every byte of output is appended before the final status is recorded, so a
stream that sees a finished run has already seen (or can still read) all of its output.

A host (or its agent) that stops answering does not end the job at once: the run says so (`ps -v`), the
backend tries to bring the agent back (reconnect, restart it: a new agent takes the job over), and the
supervisor carries on from the offset it had, so the output resumes exactly. Only after the grace
(`host_lost_seconds`, or the backend's own) does the job end `host lost`; its capacity is then free, and
whatever it left on the host is stopped by the reconciler as soon as the host answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import defer

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.backends.agent_client import AgentClient, AgentError, AgentUnreachable, LogChunk
from dstack.server.backends.base import JobEnd, Launched, LaunchFailed, LaunchProgress, LaunchRequest
from dstack.server.backends.registry import UnknownHost
from dstack.server.background import nodes as nodes_view
from dstack.server.background.leases import LeaseKeeper
from dstack.server.context import ServerContext
from dstack.server.db.models import JobRow, RunRow
from dstack.server.events import RETENTION, SCHEDULE, output_channel, run_channel, stop_channel
from dstack.server.services import code as code_service
from dstack.server.services import job_request, specs
from dstack.server.services import runs as runs_service
from dstack.server.services.errors import ServiceError
from dstack.server.services.logs import LogAppender
from dstack.server.services.transitions import (
    ABORT,
    NODE_ENDED,
    STOP,
    end_node,
    move_node,
    note,
    write_job_status,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

LONG_POLL = 5.0  # seconds an idle log request waits at the agent
# The first wait after a submission is short: a job still preparing after it shows as `pulling`, while a
# job that starts at once goes straight to `running` (one status write fewer per run).
FIRST_POLL = 1.0
RUNNING_GRACE = 0.25
LOG_CHUNK = 16 * 1024 * 1024  # the most output one poll fetches
# Stops are announced in-process (stop_channel); with SQLite there is no other process to miss, so the
# safety re-read is rare. Other databases may have replicas: re-read at the normal poll interval.
SQLITE_STOP_RECHECK = 30.0
AGENT_LOST = "agent_lost"  # the agent's reason_code: no agent could see how the job ended
RELEASE_TIMEOUT = 60.0  # seconds a backend may take to release an ended job (e.g. a Slurm job to leave)


_STAGES = [RunStatus.PROVISIONING, RunStatus.PULLING, RunStatus.RUNNING, RunStatus.TERMINATING]


class LeaseLost(Exception):
    """Another worker owns the job now; this supervisor must let go without writing anything."""


class JobFinished(Exception):
    pass


class Supervisor:
    def __init__(
        self,
        ctx: ServerContext,
        job_id: str,
        token: str,
        leases: LeaseKeeper,
        loaded: tuple[RunRow, JobRow] | None = None,
    ) -> None:
        self.ctx = ctx
        self._loaded = loaded  # the rows as claimed (the claim loop reads all of its claims at once)
        self.job_id = job_id
        self.token = token
        self._leases = leases
        self._stop_sent: str | None = None
        self._over_quota = False  # it printed more than retention.run_output_limit: stopped for it
        self._stop_grace = job_request.DEFAULT_STOP_GRACE  # the task's stop_duration, once its spec is read
        self._lease_lost = False
        self._task: asyncio.Task[Any] | None = None
        self._known_run_id: str | None = None
        self._scheduled = False  # the run has a schedule: its end makes its next job (transitions.end_job)
        self._host_id = ""
        self._launches = False  # the backend has a launch step (see the module's docstring)
        self._launched = Launched()
        self._nodes = 1  # the run's node count (a multi-node run's status writes go through the ORM)
        self._stop_criteria = "all-done"  # a multi-node run's (see services/transitions.end_node)
        self._startup_order = "any"

    async def run(self) -> None:
        self._task = asyncio.current_task()
        self._leases.hold(self.job_id, self.token, self._on_lease_lost)
        try:
            run, job = self._loaded or await self._load()
            self._loaded = None
            self._known_run_id = run.id
            self._scheduled = bool(run.schedule)
            self._nodes = run.nodes
            if job.host_id is None:
                raise RuntimeError("a placed job has no host")
            host_id = self._host_id = job.host_id
            self._launches = self.ctx.backends.needs_launch(host_id)
            spec = specs.spec_of(run.id, run.spec)
            self._stop_grace = job_request.stop_grace_of(spec)
            self._stop_criteria = str(spec.profile.get("stop_criteria") or "all-done")
            self._startup_order = str(spec.profile.get("startup_order") or "any")
            watcher = asyncio.create_task(self._watch_stop(host_id, run.id, run.stop_requested))
            try:
                if self._launches:
                    await self._launch(host_id, run, job)
                    run, job = await self._load()
                shown = RunStatus(job.status)
                if run.stop_requested:
                    # Stopped before it was handed over? Then it ends here; else the watcher stops it.
                    if not await self._reach(host_id, self._agent_has_job):
                        await self._finish_unstarted(run.stop_requested)
                        return
                elif shown is RunStatus.PROVISIONING:
                    run, job, peers = await self._my_turn(run, job)
                    if run.stop_requested:
                        if not await self._reach(host_id, self._agent_has_job):
                            await self._finish_unstarted(run.stop_requested)
                            return
                    else:
                        # The agent's submit is idempotent: after a crash between submitting and recording
                        # it, submitting again finds the job the agent already runs.
                        allocation = json.loads(job.allocation) if job.allocation else {}
                        await self._reach(
                            host_id,
                            functools.partial(
                                self._provision, run=run, job=job, peers=peers, allocation=allocation
                            ),
                        )
                await self._follow(host_id, run.id, shown)
            finally:
                watcher.cancel()
        except (LeaseLost, JobFinished):
            pass
        except asyncio.CancelledError:
            if self._lease_lost:
                log.info("job %s: lease lost, another worker took over", self.job_id)
                return
            raise
        except Exception as e:
            log.exception("job %s: supervisor failed", self.job_id)
            with contextlib.suppress(Exception):
                await self._finish(
                    RunStatus.FAILED, TerminationReason.SERVER_ERROR, f"server error: {e}", None
                )
        finally:
            self._leases.release(self.job_id)

    async def _reach(self, host_id: str, call: Callable[[AgentClient], Awaitable[T]]) -> T:
        """Call the host's agent; while it does not answer, say so and try to recover it, for the grace."""
        since: float | None = None
        while True:
            try:
                result = await call(self.ctx.backends.job_agent(host_id, self.job_id))
            except (AgentUnreachable, UnknownHost) as e:
                if self._launches:
                    # Gone because the backend ended the job (a time limit, scancel)? Then that is the end.
                    with contextlib.suppress(UnknownHost):
                        ended = await self.ctx.backends.job_ended(host_id, self.job_id)
                        if ended is not None:
                            await self._finish_end(ended)
                            raise JobFinished() from None
                now = time.monotonic()
                grace = self._lost_after(host_id)
                if since is None:
                    since = now
                    await self._note(f"{self._silent(host_id, e)}; waiting up to {grace:.0f} s for it")
                elif now - since > grace:
                    await self._finish(
                        RunStatus.FAILED,
                        TerminationReason.HOST_LOST,
                        f"host lost: {self._silent(host_id, e)} for {grace:.0f} s",
                        None,
                    )
                    raise JobFinished() from None
                recovered = False
                with contextlib.suppress(UnknownHost):
                    recovered = await self.ctx.backends.recover(host_id)
                await asyncio.sleep(0.1 if recovered else 1.0)
                continue
            if since is not None:
                await self._note(None)  # it answers again
            return result

    def _lost_after(self, host_id: str) -> float:
        try:
            own = self.ctx.backends.lost_after(host_id)
        except UnknownHost:
            own = None
        return own if own is not None else self.ctx.settings.host_lost_seconds

    def _silent(self, host_id: str, error: Exception) -> str:
        try:
            info = self.ctx.backends.describe(host_id)
        except UnknownHost:
            return "its host is in no fleet now"
        name = "the local agent" if info.backend == "local" else f"host {info.name}"
        why = info.unavailable_reason or str(error)
        return f"{name} does not answer ({why[:1].lower()}{why[1:].rstrip('.')})"

    async def _note(self, message: str | None) -> None:
        async with self.ctx.db.write() as session:
            run, _ = await self._owned(session)
            note(run, message)
            run_id = run.id
        self.ctx.notifier.notify(run_channel(run_id))

    # -- launching (backends with a queue of their own) ---------------------------------------------------

    async def _launch(self, host_id: str, run: RunRow, job: JobRow) -> None:
        """Until the job's agent answers; a stop requested meanwhile ends the launch (the backend cancels
        what it started). Raises JobFinished if the job ended here."""
        spec = specs.spec_of(run.id, run.spec)
        allocation = json.loads(job.allocation) if job.allocation else {}
        request = LaunchRequest(
            job_id=self.job_id,
            run_name=run.name,
            cpus=float(allocation.get("cpus") or 0),
            memory_gb=float(allocation.get("memory_gb") or 0),
            gpus=len(allocation.get("gpus") or []),
            max_duration=_seconds(spec.profile.get("max_duration")),
            python=spec.python if spec.image is None else None,
            instance_id=job.instance_id,
            nodes=run.nodes,
            node_rank=job.job_num,
            gang_id=await self._master_id(run, job),
        )
        progress = LaunchProgress(
            submitted=self._record_instance, waiting=self._pending, started=self._started
        )
        launch = asyncio.create_task(self.ctx.backends.launch(host_id, request, progress))
        stop = asyncio.create_task(self._stop_requested(run.id))
        try:
            done, _ = await asyncio.wait({launch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (launch, stop):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        if launch in done:
            try:
                self._launched = launch.result()
                await self._record_node(self._launched)
                return
            except LaunchFailed as e:
                await self._finish_end(e.end)
                raise JobFinished() from e
        await self._finish_unstarted(stop.result())
        raise JobFinished()

    async def _stop_requested(self, run_id: str) -> str:
        signal = self.ctx.notifier.signal(stop_channel(run_id))
        recheck = SQLITE_STOP_RECHECK if self.ctx.db.is_sqlite else self.ctx.settings.poll_seconds
        while True:
            version = signal.version
            run, _ = await self._load()
            if run.stop_requested:
                return run.stop_requested
            await signal.wait(version, recheck)

    async def _master_id(self, run: RunRow, job: JobRow) -> str | None:
        if run.nodes <= 1:
            return None
        if job.job_num == 0:
            return job.id
        async with self.ctx.db.read() as session:
            peers = await runs_service.nodes_of(session, run, job)
        return next((p.id for p in peers if p.job_num == 0), None)

    async def _record_node(self, launched: Launched) -> None:
        if launched.hostname is None and launched.address is None:
            return
        async with self.ctx.db.write() as session:
            _, job = await self._owned(session)
            job.hostname = (launched.hostname or job.hostname or "")[:128] or None
            job.address = launched.address or job.address

    async def _my_turn(self, run: RunRow, job: JobRow) -> tuple[RunRow, JobRow, list[JobRow]]:
        """Wait until this node may start (`startup_order`), or its run is stopped; returns the rows as
        they are then, with every node of the run."""
        if run.nodes <= 1:
            return run, job, [job]
        signal = self.ctx.notifier.signal(run_channel(run.id))
        shown: str | None = None
        while True:
            version = signal.version
            async with self.ctx.db.read() as session:
                run, job = await self._select(session, owned=False)
                peers = await runs_service.nodes_of(session, run, job)
            waiting = nodes_view.waits_for(self._startup_order, job.job_num, peers)
            if waiting is None or run.stop_requested:
                return run, job, peers
            if waiting != shown:
                await self._set_status(RunStatus.PROVISIONING, waiting)
                shown = waiting
            await signal.wait(version, self.ctx.settings.poll_seconds)

    async def _record_instance(self, instance_id: str, label: str) -> None:
        async with self.ctx.db.write() as session:
            run, job = await self._owned(session)
            job.instance_id = instance_id
            run.instance = label[:128]

    async def _pending(self, message: str) -> None:
        # The run waits in the backend's queue; the job stays placed (the scheduler must not place it again).
        await self._set_status(RunStatus.PENDING, message, job_status=RunStatus.PROVISIONING)

    async def _started(self, message: str) -> None:
        await self._set_status(RunStatus.PROVISIONING, message)

    # -- provisioning ------------------------------------------------------------------------------------

    async def _agent_has_job(self, agent: AgentClient) -> bool:
        try:
            await agent.get_job(self.job_id)
            return True
        except AgentUnreachable:
            raise
        except AgentError as e:
            if e.status == 404:
                return False
            raise

    async def _provision(
        self, agent: AgentClient, run: RunRow, job: JobRow, peers: list[JobRow], allocation: dict[str, Any]
    ) -> None:
        spec = specs.spec_of(run.id, run.spec)
        gpus = self._launched.job_overrides.get("resources", {}).get("gpus")
        cluster = nodes_view.cluster_of(
            peers,
            job.job_num,
            len(gpus if gpus is not None else allocation.get("gpus") or []),
            self._launched.addresses,
        )
        try:
            request = await job_request.build(self.ctx, run, self.job_id, allocation, cluster=cluster)
        except (job_request.JobRequestError, ServiceError) as e:
            await self._finish(
                RunStatus.FAILED, TerminationReason.FAILED_TO_START, f"failed to start: {e}", None
            )
            raise JobFinished() from e
        try:
            # The code and each `files` entry: of each, only the contents the agent lacks travel.
            for code_hash in dict.fromkeys([spec.code_hash, *(f.code_hash for f in spec.files)]):
                if code_hash is not None:
                    await code_service.send_to_agent(self.ctx, run.project_id, code_hash, agent)
            await agent.submit_job({**request, **self._launched.job_overrides})
        except AgentUnreachable:
            raise
        except (AgentError, ServiceError) as e:
            await self._finish(
                RunStatus.FAILED, TerminationReason.FAILED_TO_START, f"failed to start: {e}", None
            )
            raise JobFinished() from e

    # -- following ---------------------------------------------------------------------------------------

    async def _follow(self, host_id: str, run_id: str, shown: RunStatus) -> None:
        # Off the event loop: making a file costs some file systems a millisecond of kernel time (ext4
        # finding a free inode), time in which the loop would serve nothing else.
        source = self.ctx.backends.output_file(host_id, self.job_id)
        appender = await asyncio.to_thread(LogAppender, self.ctx.settings, self.job_id, source)
        limit = self.ctx.retention.run_output_limit
        position = appender.size  # how far the agent's output has been read (kept up to `limit`)
        wait = FIRST_POLL
        running_due: float | None = None
        shown_message: str | None = None
        try:
            while True:
                room = None if limit is None else limit - appender.size  # what it may print still
                try:
                    chunk = await self._reach(
                        host_id,
                        functools.partial(
                            self._poll_logs, offset=position, wait=wait, room=room, sink=appender
                        ),
                    )
                except AgentError as e:
                    if e.status == 404:  # the agent restarted with no memory of the job
                        await self._finish(
                            RunStatus.FAILED,
                            TerminationReason.HOST_LOST,
                            "host lost: its agent no longer knows the job",
                            None,
                        )
                        return
                    raise
                if chunk.data:
                    room_left = len(chunk.data) if room is None else max(0, room)
                    kept = chunk.data if room_left >= len(chunk.data) else chunk.data[:room_left]
                    if kept:
                        appender.append(kept)
                    if len(kept) < len(chunk.data) and not self._over_quota:
                        self._over_quota = True  # what it prints from now on is not kept
                        await asyncio.to_thread(appender.unshare, limit or 0)
                        await self._reach(host_id, self._stop_for_quota)
                position += len(chunk.data) + chunk.stored
                if (chunk.data or chunk.stored) and not self._over_quota:
                    self.ctx.notifier.notify(output_channel(run_id))
                if chunk.finished:
                    await self._reach(host_id, functools.partial(self._finish_from_agent, chunk=chunk))
                    return
                # Only what was seen is recorded: a job that is already running never shows `pulling`,
                # and one that ends within RUNNING_GRACE of starting never shows `running` (a write saved
                # for every short job; a longer one shows `running` that much later).
                target = RunStatus.RUNNING if chunk.status == "running" else RunStatus.PULLING
                wait = LONG_POLL
                if target is RunStatus.PULLING and chunk.message != shown_message:
                    # The agent's note ("Pulling image x") goes along as the run's status message.
                    await self._set_status(target, chunk.message)
                    shown, shown_message = target, chunk.message
                elif _STAGES.index(target) > _STAGES.index(shown):
                    if target is RunStatus.RUNNING and running_due is None:
                        # Output is proof enough that it runs: `ps` must not say pulling while it prints.
                        running_due = time.monotonic() + (0.0 if chunk.data else RUNNING_GRACE)
                    if target is RunStatus.PULLING or time.monotonic() >= (running_due or 0.0):
                        await self._set_status(target, chunk.message)
                        shown, shown_message, running_due = target, chunk.message, None
                    else:
                        wait = max(0.0, (running_due or 0.0) - time.monotonic())
        finally:
            appender.close()

    async def _stop_for_quota(self, agent: AgentClient) -> None:
        log.info(
            "job %s: output over the limit of %s bytes; stopping it",
            self.job_id,
            self.ctx.retention.run_output_limit,
        )
        with contextlib.suppress(AgentError):
            await agent.stop_job(self.job_id, abort=False, grace_seconds=self._stop_grace)

    async def _poll_logs(
        self, agent: AgentClient, *, offset: int, wait: float, room: int | None, sink: LogAppender
    ) -> LogChunk:
        """Output from `offset`: straight into the job's log while the run may print `room` more bytes
        (None: no quota), at most that much; once over its quota, read and dropped."""
        if self._over_quota:
            return await agent.logs(self.job_id, offset=offset, wait=wait)
        if room is None:
            return await agent.logs(self.job_id, offset=offset, wait=wait, sink=sink)
        if room <= 0:  # one byte more is over the quota: read without the sink, to tell
            return await agent.logs(self.job_id, offset=offset, wait=wait, limit=1)
        return await agent.logs(self.job_id, offset=offset, wait=wait, limit=min(room, LOG_CHUNK), sink=sink)

    async def _finish_from_agent(self, agent: AgentClient, chunk: LogChunk) -> None:
        if self._over_quota:
            limit = self.ctx.retention.run_output_limit or 0
            quota = f"log quota exceeded: the run printed more than {_size(limit)} of output"
            await self._finish(RunStatus.FAILED, TerminationReason.LOG_QUOTA_EXCEEDED, quota, None)
            with contextlib.suppress(AgentError):
                await agent.delete_job(self.job_id)
            return
        if chunk.status == "done":  # the common end needs nothing more from the agent
            await self._finish(RunStatus.DONE, None, None, 0)
            with contextlib.suppress(AgentError):
                await agent.delete_job(self.job_id)
            return
        state = await agent.get_job(self.job_id)
        run, job = await self._load()
        status, exit_code, reason_text = state["status"], state.get("exit_code"), state.get("reason")
        reason_code = state.get("reason_code")
        ended = None
        if status != "done" and not run.stop_requested and self._launches:
            # Slurm's own signal (a time limit, scancel) may have ended the task before its agent knew why.
            ended = await self.ctx.backends.job_ended(self._host_id, self.job_id)
        if ended is not None:
            await self._finish_end(ended)
        elif status == "done":
            await self._finish(RunStatus.DONE, None, None, 0)
        elif run.stop_requested == ABORT:
            await self._finish(RunStatus.ABORTED, TerminationReason.ABORTED_BY_USER, None, exit_code)
        elif run.stop_requested == STOP:
            await self._finish(RunStatus.TERMINATED, TerminationReason.STOPPED_BY_USER, None, exit_code)
        elif run.stop_requested == NODE_ENDED:
            await self._finish(RunStatus.TERMINATED, TerminationReason.TERMINATED_BY_SERVER, None, exit_code)
        elif status == "failed" and reason_code == "build_failed":
            message = f"build failed: {reason_text[:1].lower()}{reason_text[1:]}" if reason_text else None
            await self._finish(RunStatus.FAILED, TerminationReason.BUILD_FAILED, message, None)
        elif status == "failed" and reason_code == "build_not_found":
            await self._finish(RunStatus.FAILED, TerminationReason.BUILD_NOT_FOUND, _build_advice(run), None)
        elif status == "terminated" and reason_text and "utilization policy" in reason_text.lower():
            message = reason_text[:1].lower() + reason_text[1:]
            await self._finish(RunStatus.TERMINATED, TerminationReason.UTILIZATION_POLICY, message, exit_code)
        elif status == "terminated" and reason_text and "max duration" in reason_text.lower():
            await self._finish(RunStatus.TERMINATED, TerminationReason.MAX_DURATION_EXCEEDED, None, exit_code)
        elif status == "failed" and reason_code == AGENT_LOST:
            # It ran, but no agent saw how it ended (the agent was killed while it ran, say).
            await self._finish(
                RunStatus.FAILED,
                TerminationReason.HOST_LOST,
                f"host lost: {_sentence_case(reason_text or 'the agent was lost while the job ran')}",
                None,
            )
        elif status == "failed" and exit_code is not None:
            await self._finish(
                RunStatus.FAILED,
                TerminationReason.COMMANDS_FAILED,
                _memory_cap_hint(job, exit_code),
                exit_code,
            )
        elif status == "failed":
            await self._finish(
                RunStatus.FAILED,
                TerminationReason.FAILED_TO_START,
                f"failed to start: {reason_text or 'unknown error'}",
                None,
            )
        else:
            await self._finish(
                RunStatus.FAILED,
                TerminationReason.HOST_LOST,
                f"host lost: {reason_text or 'the job was stopped on its host'}",
                exit_code,
            )
        with contextlib.suppress(AgentError):
            await agent.delete_job(self.job_id)  # the server holds the output now

    # -- stopping ----------------------------------------------------------------------------------------

    async def _watch_stop(self, host_id: str, run_id: str, wanted: str | None) -> None:
        signal = self.ctx.notifier.signal(stop_channel(run_id))
        recheck = SQLITE_STOP_RECHECK if self.ctx.db.is_sqlite else self.ctx.settings.poll_seconds
        while True:
            version = signal.version
            with contextlib.suppress(AgentError):
                if (
                    wanted is not None
                    and wanted != self._stop_sent
                    and (wanted == ABORT or not self._stop_sent)
                ):
                    agent = self.ctx.backends.job_agent(host_id, self.job_id)
                    await agent.stop_job(self.job_id, abort=wanted == ABORT, grace_seconds=self._stop_grace)
                    self._stop_sent = wanted
            await signal.wait(version, recheck)
            try:
                run, _ = await self._load()
            except LeaseLost:
                return  # the job is gone; the supervisor ends too
            wanted = run.stop_requested

    async def _finish_unstarted(self, stop_requested: str) -> None:
        if stop_requested == ABORT:
            await self._finish(RunStatus.ABORTED, TerminationReason.ABORTED_BY_USER, None, None)
        elif stop_requested == NODE_ENDED:
            await self._finish(RunStatus.TERMINATED, TerminationReason.TERMINATED_BY_SERVER, None, None)
        else:
            await self._finish(RunStatus.TERMINATED, TerminationReason.STOPPED_BY_USER, None, None)

    # -- rows --------------------------------------------------------------------------------------------

    async def _load(self) -> tuple[RunRow, JobRow]:
        async with self.ctx.db.read() as session:
            return await self._select(session, owned=False)

    async def _select(self, session: Any, *, owned: bool) -> tuple[RunRow, JobRow]:
        # One statement for both rows: this runs several times per job, for every job.
        query = (
            select(RunRow, JobRow).join(JobRow, JobRow.run_id == RunRow.id).where(JobRow.id == self.job_id)
        )
        if owned:
            query = query.options(defer(RunRow.spec))  # status writes never need the (big) spec
        found = (await session.execute(query)).first()
        if found is None or (owned and found[1].lock_token != self.token):
            raise LeaseLost()
        return found[0], found[1]

    async def _set_status(
        self, status: RunStatus, status_message: str | None = None, job_status: RunStatus | None = None
    ) -> None:
        if self._nodes > 1:
            # A node's change also moves its run as its nodes stand together: the ORM path of move_node.
            async with self.ctx.db.write() as session:
                run, job = await self._owned(session)
                if RunStatus(run.status) is RunStatus.TERMINATING or RunStatus(run.status).is_finished:
                    return  # a stop is under way; keep showing it
                peers = await runs_service.nodes_of(session, run, job)
                move_node(run, job, peers, status, status_message=status_message, job_status=job_status)
                run_id = run.id
        else:
            # Not while a stop is under way (or recorded as ended): keep showing that.
            run_id = await self._run_id()
            written = await self._write(
                status, unless_stopping=True, status_message=status_message, job_status=job_status
            )
            if not written:
                await self._load_owned()  # raises LeaseLost if the job is not ours any more
                return
        self.ctx.notifier.notify(run_channel(run_id))

    async def _finish_end(self, end: JobEnd) -> None:
        await self._finish(end.status, end.reason, end.message, end.exit_code)

    async def _finish(
        self, status: RunStatus, reason: TerminationReason | None, message: str | None, exit_code: int | None
    ) -> None:
        # Ended means ended: what the backend holds for the job (an allocation, a port's forward) is gone
        # before the run says so.
        try:
            await asyncio.wait_for(self.ctx.backends.release(self._host_id, self.job_id), RELEASE_TIMEOUT)
        except Exception:
            log.exception("job %s: its backend did not release it", self.job_id)
        stops_others = False
        if self._scheduled or self._nodes > 1:
            # A scheduled run's end also makes its next job, and a node's end may end its run or stop the
            # other nodes: the ORM path of transitions.end_node (end_job for a single node).
            async with self.ctx.db.write() as session:
                run, job = await self._owned(session)
                peers = await runs_service.nodes_of(session, run, job)
                following, stops_others = end_node(
                    run,
                    job,
                    peers,
                    status,
                    reason=reason,
                    message=message,
                    exit_code=exit_code,
                    stop_criteria=self._stop_criteria,
                )
                session.add_all(following)  # a scheduled run waits for its next start
                run_id = run.id
        else:
            run_id = await self._run_id()
            if not await self._write(status, reason=reason, message=message, exit_code=exit_code):
                raise LeaseLost()
            specs.forget(run_id)  # its one job ended: nothing here reads its spec again
        self.ctx.notifier.notify(run_channel(run_id))
        if stops_others:  # the run's other nodes stop now (a node failed, or the master is done)
            self.ctx.notifier.notify(stop_channel(run_id))
        self.ctx.notifier.notify(SCHEDULE)  # its capacity is free now
        self.ctx.notifier.notify(RETENTION)  # finished runs may be over the limits now

    async def _write(self, status: RunStatus, **details: Any) -> bool:
        """The status change, written while this supervisor holds the job's lease. The status writes of
        many jobs share one transaction (Database.write_batched)."""
        run_id = await self._run_id()
        change = functools.partial(
            write_job_status, run_id=run_id, job_id=self.job_id, token=self.token, status=status, **details
        )
        return bool(await self.ctx.db.write_batched(change))

    async def _owned(self, session: Any) -> tuple[RunRow, JobRow]:
        return await self._select(session, owned=True)

    async def _load_owned(self) -> tuple[RunRow, JobRow]:
        async with self.ctx.db.read() as session:
            return await self._select(session, owned=True)

    async def _run_id(self) -> str:
        if self._known_run_id is None:
            run, _ = await self._load()
            self._known_run_id = run.id
        return self._known_run_id

    def _on_lease_lost(self) -> None:
        # Stop at once: two writers appending to one log file would corrupt it.
        self._lease_lost = True
        if self._task is not None:
            self._task.cancel()


def _sentence_case(text: str) -> str:
    return text[:1].lower() + text[1:]


def _build_advice(run: RunRow) -> str:
    spec = specs.spec_of(run.id, run.spec)
    advice = specs.build_advice(spec.configuration_path)
    return f"build not found: this configuration's build is not cached on its host yet; {advice}"


def _size(size: int) -> str:
    from dstack.config.ranges import Memory

    return str(Memory(size / 1024**3))


def _memory_cap_hint(job: JobRow, exit_code: int) -> str | None:
    """A task killed by SIGKILL under a memory cap most likely went over it: say so, not just "137"."""
    if exit_code != 137 or not job.allocation:
        return None
    cap = json.loads(job.allocation).get("memory_limit_gb")
    if not cap:
        return None
    from dstack.config.ranges import Memory

    return (
        f"commands failed with exit code 137: killed, most likely for going over its {Memory(cap)} memory cap"
    )


def _seconds(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
