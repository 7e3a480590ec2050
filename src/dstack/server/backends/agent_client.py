"""The server's client of an agent's HTTP API (see dstack.agent). Every call is authenticated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from dstack.server.backends.agent_http import AgentHTTP, TransportError
from dstack.server.backends.agent_tunnel import TunnelRefused, TunnelStream, open_tunnel


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
    message: str | None = None  # what the agent is doing for the job (e.g. "Pulling image X")

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

    async def close(self) -> None:
        await self._lean.aclose()
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The response (httpx's, or the lean client's with the same status_code, headers, content, json)."""
        try:
            if set(kwargs) <= {"params", "json", "timeout"}:
                response: Any = await self._lean.request(
                    method,
                    path,
                    params=kwargs.get("params"),
                    json_body=kwargs.get("json"),
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

    async def has_build(self, *, python: str | None, image: str | None, inputs: dict[str, Any]) -> bool:
        """Whether the host has a cached build for these inputs (dstack.agent.environments.buildkey)."""
        body = {"python": python, "image": image, "inputs": inputs}
        return bool((await self._request("POST", "/api/builds/lookup", json=body)).json().get("cached"))

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
        # The lean client reads the body with one readexactly: this path carries a task's whole output.
        response = await self._request(
            "GET",
            f"/api/jobs/{job_id}/logs",
            params={"offset": offset, "wait": wait, "limit": limit},
            timeout=self._timeout + wait,
        )
        exit_code = response.headers.get("X-Exit-Code")
        message = response.headers.get("X-Job-Message")
        return LogChunk(
            data=response.content,
            end=int(response.headers["X-Log-End"]),
            size=int(response.headers["X-Log-Size"]),
            status=response.headers["X-Job-Status"],
            exit_code=int(exit_code) if exit_code not in (None, "") else None,
            message=unquote(message) if message else None,
        )

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
