"""The server's client of an agent's HTTP API (see dstack.agent). Every call is authenticated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from dstack.server.backends.agent_logs import RawHttpPool, RawResponseError


class AgentError(Exception):
    """The agent answered with an error; `status` is its HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AgentUnreachable(AgentError):
    """No answer at all: the host or its agent is down, or the network is."""


@dataclass
class LogChunk:
    data: bytes
    end: int  # the offset right after `data`
    size: int  # bytes the agent holds so far
    status: str
    exit_code: int | None
    message: str | None = None  # what the agent is doing for the job ("Pulling image x", ...)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "terminated") and self.end >= self.size


class AgentClient:
    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._logs_pool = RawHttpPool(self.url, token)
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def close(self) -> None:
        self._logs_pool.close()
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise AgentUnreachable(f"Cannot reach the agent at {self.url}: {e or type(e).__name__}") from e
        # A 404 to HEAD is an answer ("not stored"), not an error.
        if response.status_code >= 400 and not (method == "HEAD" and response.status_code == 404):
            raise AgentError(_error_message(response), response.status_code)
        return response

    async def health(self) -> dict[str, Any]:
        return (await self._request("GET", "/api/health")).json()

    async def host(self) -> dict[str, Any]:
        return (await self._request("GET", "/api/host")).json()

    async def has_code(self, code_hash: str) -> bool:
        response = await self._request("HEAD", f"/api/code/{code_hash}")
        return response.status_code == 200

    async def upload_code(self, code_hash: str, path: Path) -> None:
        size = path.stat().st_size

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(1024 * 1024):
                    yield chunk

        await self._request(
            "PUT",
            f"/api/code/{code_hash}",
            content=body(),
            headers={"Content-Length": str(size), "Content-Type": "application/x-tar"},
            timeout=httpx.Timeout(self._timeout, write=300.0, read=300.0),
        )

    async def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        return (await self._request("POST", "/api/jobs", json=job)).json()

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/api/jobs/{job_id}")).json()

    async def list_jobs(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/api/jobs")).json()

    async def stop_job(self, job_id: str, *, abort: bool, grace_seconds: float | None = None) -> None:
        await self._request(
            "POST", f"/api/jobs/{job_id}/stop", json={"abort": abort, "grace_seconds": grace_seconds}
        )

    async def delete_job(self, job_id: str) -> None:
        await self._request("DELETE", f"/api/jobs/{job_id}")

    async def sync_files(self, job_id: str, body: AsyncIterator[bytes], length: int) -> dict[str, Any]:
        """Apply a --reload batch (a tar, see dstack.agent.filesync) to the job's code folder."""
        response = await self._request(
            "POST",
            f"/api/jobs/{job_id}/files",
            content=body,
            headers={"Content-Length": str(length), "Content-Type": "application/x-tar"},
            timeout=httpx.Timeout(self._timeout, write=300.0, read=300.0),
        )
        return response.json()

    async def compare_files(self, job_id: str, entries: list[list[Any]]) -> list[Any]:
        response = await self._request(
            "POST", f"/api/jobs/{job_id}/files/compare", json={"entries": entries}, timeout=120.0
        )
        return response.json()["results"]

    async def logs(self, job_id: str, *, offset: int, wait: float, limit: int = 16 * 1024 * 1024) -> LogChunk:
        try:
            status, headers, body = await self._logs_pool.get(
                f"/api/jobs/{job_id}/logs",
                {"offset": offset, "wait": wait, "limit": limit},
                self._timeout + wait,
            )
        except RawResponseError as e:
            raise AgentUnreachable(f"Cannot reach the agent at {self.url}: {e}") from e
        if status >= 400:
            raise AgentError(_error_text(body, status), status)
        exit_code = headers.get("x-exit-code")
        message = headers.get("x-job-message")
        return LogChunk(
            data=body,
            end=int(headers["x-log-end"]),
            size=int(headers["x-log-size"]),
            status=headers["x-job-status"],
            exit_code=int(exit_code) if exit_code else None,
            message=unquote(message) if message else None,
        )


def _error_message(response: httpx.Response) -> str:
    return _error_text(response.content, response.status_code)


def _error_text(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return f"the agent answered HTTP {status}"
