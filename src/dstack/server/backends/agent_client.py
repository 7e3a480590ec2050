"""The server's client of an agent's HTTP API (see dstack.agent). Every call is authenticated."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlencode

import httpx

from dstack.code.blobs import BlobSource, blob_parts, stream_length
from dstack.code.blobs import header as blob_header
from dstack.server.backends.agent_events import AgentEvents, Coalescer, JobView
from dstack.server.backends.agent_http import AgentHTTP, BodyFetcher, BodyPart, StreamBody, TransportError
from dstack.server.backends.agent_tunnel import TunnelRefused, TunnelStream, open_tunnel


class AgentError(Exception):
    """The agent answered with an error; `status` is its HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AgentUnreachable(AgentError):
    """No answer at all: the host or its agent is down, or the network is."""


class LogSink(Protocol):
    """Where a job's output may be appended directly (the server's copy, see services/logs.py)."""

    @property
    def fd(self) -> int: ...

    # True: the sink is the agent's own output file (a link on this disk): the bytes are in it already,
    # so nothing travels and `grew` only counts.
    shared: bool

    def grew(self, count: int) -> None: ...


@dataclasses.dataclass
class LogChunk:
    data: bytes  # output to append (empty when it went straight into the sink: see `stored`)
    end: int  # the offset right after this chunk's output
    size: int  # bytes the agent holds so far
    status: str
    exit_code: int | None
    message: str | None = None  # what the agent is doing for the job (e.g. "Pulling image X")
    stored: int = 0  # bytes of output already appended to the caller's sink

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "terminated") and self.end >= self.size


class AgentClient:
    def __init__(
        self, url: str, token: str, *, timeout: float = 10.0, socket_path: str | None = None
    ) -> None:
        """`socket_path`: reach the agent through this unix socket (an SSH forward to a remote host's
        agent); `url` then only names it (in messages and the Host header)."""
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._socket_path = socket_path
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout),
            limits=limits,
            transport=httpx.AsyncHTTPTransport(uds=socket_path, limits=limits) if socket_path else None,
        )
        # The calls made for every job go through a leaner client (see agent_http); httpx keeps the rest.
        self._lean = AgentHTTP(self.url, {"Authorization": f"Bearer {token}"}, socket_path=socket_path)
        # Jobs are followed through one event stream, submitted and deleted in batches (agent_events).
        self._events = AgentEvents(self.url, {"Authorization": f"Bearer {token}"}, socket_path=socket_path)
        self._submits: Coalescer[dict[str, Any], dict[str, Any]] = Coalescer(self._submit_batch, BATCH)
        self._deletes: Coalescer[str, dict[str, Any]] = Coalescer(self._delete_batch, BATCH)
        self._batches = True  # cleared if the agent predates the batch routes
        # Floods of output go from the agent's socket into the server's file in worker threads.
        self._fetcher = BodyFetcher(self.url, {"Authorization": f"Bearer {token}"}, socket_path=socket_path)
        self._fetch_pool = ThreadPoolExecutor(max_workers=_FETCH_THREADS, thread_name_prefix="agent-logs")

    async def close(self) -> None:
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        await self._events.close()
        await self._lean.aclose()
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The response (httpx's, or the lean client's with the same status_code, headers, content, json)."""
        try:
            if set(kwargs) <= {"params", "json", "raw", "stream", "timeout"}:
                response: Any = await self._lean.request(
                    method,
                    path,
                    params=kwargs.get("params"),
                    json_body=kwargs.get("json"),
                    raw_body=kwargs.get("raw"),
                    stream=kwargs.get("stream"),
                    timeout=_seconds(kwargs.get("timeout"), self._timeout),
                )
            else:
                response = await self._client.request(method, path, **kwargs)
        except (httpx.TransportError, TransportError) as e:
            raise AgentUnreachable(f"Cannot reach the agent at {self.url}: {e or type(e).__name__}") from e
        # A 404 to HEAD is an answer ("not stored"), not an error.
        if response.status_code >= 400 and not (method == "HEAD" and response.status_code == 404):
            raise AgentError(_error_message(response), response.status_code)
        return response

    async def health(self, timeout: float | None = None) -> dict[str, Any]:
        return (await self._request("GET", "/api/health", timeout=timeout)).json()

    async def ping(self, timeout: float | None = None) -> None:
        """The cheapest request that needs the token: raises AgentError (401: another's agent) or
        AgentUnreachable; returns if this is our agent and it answers."""
        await self._request("HEAD", f"/api/code/{'0' * 64}", timeout=timeout)

    async def host(self) -> dict[str, Any]:
        return (await self._request("GET", "/api/host")).json()

    async def has_code(self, code_hash: str) -> bool:
        response = await self._request("HEAD", f"/api/code/{code_hash}")
        return response.status_code == 200

    async def missing_blobs(self, blobs: dict[str, int]) -> list[str]:
        """Which of these contents (sha256 -> size) the agent's code store lacks."""
        wanted = b"".join(blob_header(sha256, size) for sha256, size in blobs.items())
        response = await self._request("POST", "/api/code/missing", raw=wanted, timeout=120.0)
        return list(response.json()["missing"])

    async def upload_blobs(self, blobs: Sequence[tuple[str, int]], source: BlobSource) -> None:
        """Send these (sha256, size) contents, read from `source`, in one blob stream."""
        await self._request("POST", "/api/code/blobs", stream=blob_stream(blobs, source), timeout=600.0)

    async def put_manifest(self, code_hash: str, manifest: bytes) -> None:
        await self._request("PUT", f"/api/code/{code_hash}", raw=manifest, timeout=120.0)

    async def has_build(self, *, python: str | None, image: str | None, inputs: dict[str, Any]) -> bool:
        """Whether the host has a cached build for these inputs (dstack.agent.environments.buildkey)."""
        body = {"python": python, "image": image, "inputs": inputs}
        return bool((await self._request("POST", "/api/builds/lookup", json=body)).json().get("cached"))

    async def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        if not self._batches:
            return (await self._request("POST", "/api/jobs", json=job)).json()
        return _result(await self._submits.call(job), "job")

    async def _submit_batch(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            response = await self._request("POST", "/api/jobs/batch", json={"jobs": jobs}, timeout=60.0)
        except AgentError as e:
            if e.status not in (404, 405):
                raise
            self._batches = False
            return [{"status": 201, "job": await self.submit_job(job)} for job in jobs]
        return list(response.json()["results"])

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/api/jobs/{job_id}")).json()

    async def list_jobs(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/api/jobs")).json()

    async def stop_job(self, job_id: str, *, abort: bool, grace_seconds: float | None = None) -> None:
        await self._request(
            "POST", f"/api/jobs/{job_id}/stop", json={"abort": abort, "grace_seconds": grace_seconds}
        )

    async def delete_job(self, job_id: str) -> None:
        self._events.forget(job_id)
        if not self._batches:
            await self._request("DELETE", f"/api/jobs/{job_id}")
            return
        _result(await self._deletes.call(job_id), None)

    async def _delete_batch(self, job_ids: list[str]) -> list[dict[str, Any]]:
        response = await self._request("POST", "/api/jobs/delete", json={"ids": job_ids}, timeout=60.0)
        return list(response.json()["results"])

    async def sync_files(self, job_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply a --reload batch (see dstack.agent.filesync) to the job's code folder."""
        response = await self._request("POST", f"/api/jobs/{job_id}/files", json=changes, timeout=300.0)
        return dict(response.json())

    async def compare_files(self, job_id: str, entries: list[list[Any]]) -> list[Any]:
        response = await self._request(
            "POST", f"/api/jobs/{job_id}/files/compare", json={"entries": entries}, timeout=120.0
        )
        return response.json()["results"]

    async def logs(
        self,
        job_id: str,
        *,
        offset: int,
        wait: float,
        limit: int = 16 * 1024 * 1024,
        sink: LogSink | None = None,
    ) -> LogChunk:
        """The job's output from `offset` (up to `limit` bytes) and its state, as soon as either changed
        (or after `wait` seconds): told by the agent's event stream, or long-polled while it is down.
        With a `sink`, big output goes straight into it (see LogChunk.stored)."""
        view = self._events.view(job_id)
        if view is None:
            return _counted(await self._poll_logs(job_id, offset=offset, wait=wait, limit=limit), sink)
        seen = (view.status, view.message)
        deadline = asyncio.get_running_loop().time() + wait
        while (
            view.size <= offset
            and (view.status, view.message) == seen
            and view.status not in _FINAL
            and not view.gone
        ):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or not self._events.healthy:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(view.changed.wait(), remaining)
        if view.gone or not self._events.healthy:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            return _counted(await self._poll_logs(job_id, offset=offset, wait=remaining, limit=limit), sink)
        data = b""
        if sink is not None and sink.shared:
            # The bytes are in the sink already (the agent's own file): what the agent published is counted.
            stored = max(0, min(limit, view.size - offset))
            sink.grew(stored)
            return _chunk_of(view, offset, b"", stored)
        if view.size > offset:
            inline = view.inline(offset, limit)
            if inline is None or len(inline) < min(limit, view.size - offset):
                # A flood of output is announced, not carried: read it (the agent batches floods itself).
                if sink is not None:
                    return await self._fetch_logs(job_id, offset=offset, limit=limit, sink=sink)
                return await self._poll_logs(job_id, offset=offset, wait=wait, limit=limit)
            data = inline
        return _chunk_of(view, offset, data)

    async def _fetch_logs(self, job_id: str, *, offset: int, limit: int, sink: LogSink) -> LogChunk:
        """Output the agent has already: read in a worker thread straight into the sink."""
        # A short wait lets the agent gather a flood into one big answer (it answers at once otherwise).
        target = f"/api/jobs/{job_id}/logs?{urlencode({'offset': offset, 'wait': 1.0, 'limit': limit})}"
        loop = asyncio.get_running_loop()
        call = functools.partial(self._fetcher.fetch_into, target, sink.fd, self._timeout + 1.0)
        try:
            status, headers, error_body, written = await loop.run_in_executor(self._fetch_pool, call)
        except TransportError as e:
            raise AgentUnreachable(f"Cannot reach the agent at {self.url}: {e}") from e
        sink.grew(written)
        if status >= 400:
            raise AgentError(_error_message(_Answer(status, error_body)), status)
        return _chunk_from(headers, b"", stored=written)

    async def _poll_logs(self, job_id: str, *, offset: int, wait: float, limit: int) -> LogChunk:
        # The lean client reads the body with one readexactly: this path carries a task's whole output.
        response = await self._request(
            "GET",
            f"/api/jobs/{job_id}/logs",
            params={"offset": offset, "wait": wait, "limit": limit},
            timeout=self._timeout + wait,
        )
        return _chunk_from(response.headers, response.content)

    async def port_status(self, job_id: str, port: int, *, wait: float) -> dict[str, Any]:
        """{"port", "open", "status"}; the agent answers as soon as the port opens, or after `wait` s."""
        response = await self._request(
            "GET",
            f"/api/jobs/{job_id}/ports/{port}",
            params={"wait": wait},
            timeout=httpx.Timeout(self._timeout + wait),
        )
        return response.json()

    async def open_tunnel(self, job_id: str, port: int) -> TunnelStream:
        """A TCP stream to the job's port, relayed by the agent (an HTTP Upgrade to raw bytes)."""
        try:
            return await open_tunnel(
                self.url, self._token, job_id, port, timeout=self._timeout, socket_path=self._socket_path
            )
        except TunnelRefused as e:
            raise AgentError(str(e), e.status) from e
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            raise AgentUnreachable(
                f"Cannot open a tunnel through the agent at {self.url}: {e or type(e).__name__}"
            ) from e


def blob_stream(blobs: Sequence[tuple[str, int]], source: BlobSource) -> StreamBody:
    """A blob stream (dstack.code.blobs) of these (sha256, size) contents, read from `source`."""
    sizes = dict(blobs)

    def parts() -> Iterator[BodyPart]:
        for part in blob_parts(blobs, source.read_small):
            yield part if isinstance(part, bytes) else (Path(source.file(part)), sizes[part])

    return StreamBody(stream_length([size for _, size in blobs]), parts)


BATCH = 500  # jobs per batch request
_FETCH_THREADS = 4


def _chunk_of(view: JobView, offset: int, data: bytes, stored: int = 0) -> LogChunk:
    """A LogChunk from what the agent's event stream says of the job (a `JobView`)."""
    return LogChunk(
        data=data,
        end=offset + len(data) + stored,
        size=view.size,
        status=view.status,
        exit_code=view.exit_code if view.status in _FINAL else None,
        message=view.message,
        stored=stored,
    )


def _counted(chunk: LogChunk, sink: LogSink | None) -> LogChunk:
    """A chunk read from the agent for a shared sink: its bytes are in the sink already, so they are
    counted as stored instead of handed back to append (the event stream was down: they travelled)."""
    if sink is None or not sink.shared or not chunk.data:
        return chunk
    sink.grew(len(chunk.data))
    return dataclasses.replace(chunk, data=b"", stored=chunk.stored + len(chunk.data))


def _chunk_from(headers: Any, data: bytes, stored: int = 0) -> LogChunk:
    """A LogChunk from the headers of the agent's logs route."""
    exit_code = headers.get("X-Exit-Code")
    message = headers.get("X-Job-Message")
    return LogChunk(
        data=data,
        end=int(headers["X-Log-End"]),
        size=int(headers["X-Log-Size"]),
        status=headers["X-Job-Status"],
        exit_code=int(exit_code) if exit_code not in (None, "") else None,
        message=unquote(message) if message else None,
        stored=stored,
    )


class _Answer:
    """An error answer in the shape _error_message reads."""

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content


_FINAL = ("done", "failed", "terminated")


def _result(answer: dict[str, Any], key: str | None) -> Any:
    """One job's answer in a batch, or its error raised as the single-job route would."""
    status = int(answer.get("status", 500))
    if status >= 400:
        raise AgentError(str(answer.get("error") or f"the agent answered HTTP {status}"), status)
    return answer.get(key) if key is not None else None


def _seconds(timeout: Any, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, httpx.Timeout):
        return max(t for t in (timeout.connect, timeout.read, timeout.write, default) if t is not None)
    return float(timeout)


def _error_message(response: Any) -> str:
    try:
        return str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        return f"the agent answered HTTP {response.status_code}"
