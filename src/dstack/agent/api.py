"""The agent's HTTP API: the only way the server talks to the agent."""

from __future__ import annotations

import contextlib
import os
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

from dstack.agent import __version__
from dstack.agent.codestore import (
    HEADER,
    MAX_ENTRIES,
    MAX_MANIFEST_BYTES,
    CodeStore,
    CodeTooLarge,
    CodeUploadError,
    is_code_hash,
)
from dstack.agent.environments.buildkey import check_inputs
from dstack.agent.events import EventRoutes, JobEvents
from dstack.agent.filesync import FileSync
from dstack.agent.host import host_facts
from dstack.agent.httpserver import ApiError, Exchange, Route
from dstack.agent.jobs.job import Job
from dstack.agent.jobs.registry import JobConflictError, JobRegistry
from dstack.agent.jobs.spec import MAX_STOP_GRACE_SECONDS, SpecError, parse_job_spec
from dstack.agent.runner import REASON_ABORTED, REASON_STOPPED, Runner
from dstack.agent.tunnel import PortRoutes

DEFAULT_LOG_LIMIT = 4 * 1024 * 1024
_FLOOD_BYTES = 64 * 1024
_BATCH_BYTES = 1024 * 1024
_BATCH_SECONDS = 0.003
MAX_LOG_LIMIT = 16 * 1024 * 1024
MAX_LOG_WAIT_SECONDS = 60.0
MAX_TIMESTAMPS = 100_000
MAX_BATCH_JOBS = 1000
MAX_BATCH_JSON_BYTES = 32 * 1024 * 1024
_JOB = r"/api/jobs/(?P<job_id>[^/]+)"


class AgentApi:
    def __init__(
        self,
        work_dir: Path,
        registry: JobRegistry,
        runner: Runner,
        code_store: CodeStore,
        max_code_bytes: int,
        events: Optional[JobEvents] = None,
    ) -> None:
        self._work_dir = work_dir
        self._registry = registry
        self._runner = runner
        self._code_store = code_store
        self._max_code_bytes = max_code_bytes
        self._files = FileSync(registry, code_store.blob_path)
        self._events = EventRoutes(registry, events or JobEvents())

    def routes(self) -> List[Route]:
        return [
            Route("GET", r"/api/health", self.health, auth=False),
            Route("GET", r"/api/host", self.host),
            Route("POST", r"/api/code/missing", self.missing_blobs),
            Route("POST", r"/api/code/blobs", self.upload_blobs),
            Route("HEAD", r"/api/code/(?P<code_hash>[^/]+)", self.code_exists),
            Route("PUT", r"/api/code/(?P<code_hash>[^/]+)", self.upload_manifest),
            Route("POST", r"/api/jobs", self.submit_job),
            Route("POST", r"/api/jobs/batch", self.submit_jobs),
            Route("POST", r"/api/jobs/delete", self.delete_jobs),
            Route("GET", r"/api/jobs", self.list_jobs),
            Route("GET", _JOB, self.get_job),
            Route("DELETE", _JOB, self.delete_job),
            Route("GET", _JOB + r"/logs", self.job_logs),
            Route("GET", _JOB + r"/timestamps", self.job_timestamps),
            Route("POST", _JOB + r"/stop", self.stop_job),
            Route("POST", r"/api/builds/lookup", self.lookup_build),
            *self._files.routes(),  # --reload: live edits to a running job's code
            *PortRoutes(self._registry).routes(),
            *self._events.routes(),  # one stream of every job's changes, instead of a poll per job
        ]

    def health(self, exchange: Exchange) -> None:
        exchange.send_json(
            HTTPStatus.OK, {"service": "dstack-agent", "version": __version__, "pid": os.getpid()}
        )

    def host(self, exchange: Exchange) -> None:
        exchange.send_json(HTTPStatus.OK, host_facts(self._work_dir))

    def code_exists(self, exchange: Exchange) -> None:
        found = self._code_store.has(_code_hash(exchange))
        exchange.send_empty(HTTPStatus.OK if found else HTTPStatus.NOT_FOUND)

    def missing_blobs(self, exchange: Exchange) -> None:
        """Which of the contents named in the body (40-byte sha256 + size entries) the store lacks."""
        stream, length = exchange.body_stream(MAX_ENTRIES * HEADER.size)
        wanted = stream.read(length)
        if len(wanted) != length:
            raise ApiError(HTTPStatus.BAD_REQUEST, "The request body ended early")
        with _refusals():
            missing = self._code_store.missing(wanted)
        exchange.send_json(HTTPStatus.OK, {"missing": missing})

    def upload_blobs(self, exchange: Exchange) -> None:
        limit = self._max_code_bytes + MAX_ENTRIES * HEADER.size
        stream, length = exchange.body_stream(limit)
        with _refusals():
            count = self._code_store.receive(stream, length, self._max_code_bytes)
        exchange.send_json(HTTPStatus.CREATED, {"stored": count})

    def upload_manifest(self, exchange: Exchange) -> None:
        code_hash = _code_hash(exchange)
        stream, length = exchange.body_stream(MAX_MANIFEST_BYTES)
        manifest = stream.read(length)
        if len(manifest) != length:
            raise ApiError(HTTPStatus.BAD_REQUEST, "The request body ended early")
        with _refusals():
            self._code_store.store_manifest(code_hash, manifest, self._max_code_bytes)
        exchange.send_json(HTTPStatus.CREATED, {"code_hash": code_hash})

    def submit_job(self, exchange: Exchange) -> None:
        status, answer = self._submit(exchange.read_json())
        if status >= 400:
            raise ApiError(status, answer["error"])
        exchange.send_json(status, answer["job"])

    def submit_jobs(self, exchange: Exchange) -> None:
        """Many jobs in one request: {"jobs": [spec, ...]} -> {"results": [{"status", "job" | "error"}]}."""
        body = exchange.read_json(MAX_BATCH_JSON_BYTES)
        specs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(specs, list) or len(specs) > MAX_BATCH_JOBS:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"The body must hold a list of at most {MAX_BATCH_JOBS} jobs"
            )
        results = []
        for spec in specs:
            status, answer = self._submit(spec)
            results.append({"status": int(status), **answer})
        exchange.send_json(HTTPStatus.OK, {"results": results})

    def _submit(self, body: Any) -> Tuple[int, Dict[str, Any]]:
        try:
            spec = parse_job_spec(body)
        except SpecError as e:
            return HTTPStatus.BAD_REQUEST, {"error": str(e)}
        for code_hash in [spec.code_hash, *(f.code_hash for f in spec.files)]:
            if code_hash is not None and not self._code_store.has(code_hash):
                return HTTPStatus.BAD_REQUEST, {"error": f"Code {code_hash} has not been uploaded"}
        try:
            job, created = self._registry.create(spec)
        except JobConflictError as e:
            return HTTPStatus.CONFLICT, {"error": str(e)}
        if created:
            self._runner.launch(job)
        return (HTTPStatus.CREATED if created else HTTPStatus.OK), {"job": job.to_json()}

    def lookup_build(self, exchange: Exchange) -> None:
        """{"python" | "image", "inputs"} -> {"cached", "key"}: whether a plan's build is cached here."""
        data = exchange.read_json()
        try:
            if not isinstance(data, dict):
                raise ValueError("send an object with python or image, and inputs")
            inputs = check_inputs(data.get("inputs"))
            python, image = data.get("python"), data.get("image")
            if not all(v is None or isinstance(v, str) for v in (python, image)):
                raise ValueError("python and image are strings")
        except ValueError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(e)) from e
        key = self._runner.find_build(python, image, inputs)
        exchange.send_json(HTTPStatus.OK, {"cached": key is not None, "key": key})

    def list_jobs(self, exchange: Exchange) -> None:
        exchange.send_json(HTTPStatus.OK, [job.to_json() for job in self._registry.list()])

    def get_job(self, exchange: Exchange) -> None:
        exchange.send_json(HTTPStatus.OK, self._job(exchange).to_json())

    def delete_job(self, exchange: Exchange) -> None:
        status, error = self._delete(exchange.params["job_id"])
        if error is not None:
            raise ApiError(status, error)
        exchange.send_empty(HTTPStatus.NO_CONTENT)

    def delete_jobs(self, exchange: Exchange) -> None:
        """{"ids": [...]} -> {"results": [{"status"[, "error"]}]}, in order."""
        body = exchange.read_json(MAX_BATCH_JSON_BYTES)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or len(ids) > MAX_BATCH_JOBS or not all(isinstance(i, str) for i in ids):
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"The body must hold a list of at most {MAX_BATCH_JOBS} ids"
            )
        results = []
        for job_id in ids:
            status, error = self._delete(job_id)
            results.append(
                {"status": int(status)} if error is None else {"status": int(status), "error": error}
            )
        exchange.send_json(HTTPStatus.OK, {"results": results})

    def _delete(self, job_id: str) -> Tuple[int, Optional[str]]:
        try:
            deleted = self._registry.delete(job_id)
        except JobConflictError as e:
            return HTTPStatus.CONFLICT, str(e)
        if not deleted:
            return HTTPStatus.NOT_FOUND, _job_not_found(job_id).message
        return HTTPStatus.NO_CONTENT, None

    def job_logs(self, exchange: Exchange) -> None:
        job = self._job(exchange)
        offset = int(exchange.query_number("offset", 0, integer=True))
        limit = int(exchange.query_number("limit", DEFAULT_LOG_LIMIT, integer=True))
        wait = min(max(exchange.query_number("wait", 0.0), 0.0), MAX_LOG_WAIT_SECONDS)
        if limit < 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Query parameter limit must not be negative")
        size = job.logs.size()
        if not 0 <= offset <= size:
            raise ApiError(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                f"Offset {offset} is outside the job's output of {size} bytes",
                {"X-Log-Size": str(size)},
            )
        seen = job.state
        if offset == size and not seen.is_final and wait > 0:
            job.logs.wait_for_change(
                offset, wait, lambda: (job.state.status, job.state.message) == (seen.status, seen.message)
            )
        if wait > 0 and _FLOOD_BYTES <= job.logs.size() - offset < _BATCH_BYTES:
            # A flood of output: a moment's wait turns many small answers into one big one, which costs
            # the agent and the server far less per byte. A trickle (a line now and then) never waits.
            _wait_for_batch(job, offset + _BATCH_BYTES, _BATCH_SECONDS, seen.status)
        # Status before size: a final status read here guarantees the size includes all output.
        state = job.state
        size = job.logs.size()
        count = min(limit, MAX_LOG_LIMIT, size - offset)
        headers = {"X-Log-End": str(offset + count), "X-Log-Size": str(size), "X-Job-Status": state.status}
        if state.message:
            headers["X-Job-Message"] = quote(state.message, safe=" /:,.()")  # header values are ASCII
        if state.is_final and state.exit_code is not None:
            headers["X-Exit-Code"] = str(state.exit_code)
        try:
            exchange.send_file_range(str(job.logs.log_path), offset, count, headers)
        except FileNotFoundError:
            raise _job_not_found(job.id) from None

    def job_timestamps(self, exchange: Exchange) -> None:
        job = self._job(exchange)
        offset = int(exchange.query_number("offset", 0, integer=True))
        if offset < 0:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Query parameter offset must not be negative")
        entries, more = job.logs.timestamps(offset, MAX_TIMESTAMPS)
        exchange.send_json(HTTPStatus.OK, {"entries": [list(entry) for entry in entries], "more": more})

    def stop_job(self, exchange: Exchange) -> None:
        job = self._job(exchange)
        body = exchange.read_json()
        abort, grace = _parse_stop(body)
        stopping = self._runner.stop(job, abort, grace, REASON_ABORTED if abort else REASON_STOPPED)
        exchange.send_json(HTTPStatus.ACCEPTED if stopping else HTTPStatus.OK, job.to_json())

    def _job(self, exchange: Exchange) -> Job:
        job = self._registry.get(exchange.params["job_id"])
        if job is None:
            raise _job_not_found(exchange.params["job_id"])
        return job


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The code store's refusals as HTTP answers (one sentence each)."""
    try:
        yield
    except CodeTooLarge as e:
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(e)) from e
    except CodeUploadError as e:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(e)) from e


def _code_hash(exchange: Exchange) -> str:
    code_hash = exchange.params["code_hash"].lower()
    if not is_code_hash(code_hash):
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "The code hash must be a sha256 hex digest (64 hex characters)"
        )
    return code_hash


def _job_not_found(job_id: str) -> ApiError:
    shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
    return ApiError(HTTPStatus.NOT_FOUND, f"Job {shown} not found")


def _parse_stop(body: Any) -> Tuple[bool, Optional[float]]:
    if not isinstance(body, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "The stop request must be a JSON object")
    unknown = sorted(set(body) - {"abort", "grace_seconds"})
    if unknown:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Unknown stop field(s) {', '.join(unknown)}")
    abort = body.get("abort", False)
    grace = body.get("grace_seconds")
    if not isinstance(abort, bool):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Field abort must be true or false")
    if grace is not None and (
        isinstance(grace, bool)
        or not isinstance(grace, (int, float))
        or not 0 <= grace <= MAX_STOP_GRACE_SECONDS
    ):
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"Field grace_seconds must be between 0 and {MAX_STOP_GRACE_SECONDS:g} seconds",
        )
    return abort, None if grace is None else float(grace)


def _wait_for_batch(job: Job, target: int, seconds: float, status: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        size = job.logs.size()
        remaining = deadline - time.monotonic()
        if size >= target or remaining <= 0 or job.state.status != status:
            return
        job.logs.wait_for_change(size, remaining, lambda: job.state.status == status)
