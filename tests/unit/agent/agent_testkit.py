"""Helpers for driving a real agent process over HTTP in tests."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_SRC = Path(__file__).resolve().parents[3] / "src"
TOKEN = "test-token-" + uuid.uuid4().hex
PYTHON39 = Path("/root/.pyenv/versions/3.9.18/bin/python3.9")
FINAL = ("done", "failed", "terminated")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class AgentClient:
    """A keep-alive HTTP/1.1 client (one connection, reused across requests)."""

    def __init__(self, port: int, token: str | None = TOKEN, host: str = "127.0.0.1") -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=90)
        self.token = token

    def close(self) -> None:
        self.connection.close()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        self.connection.request(method, path, body=body, headers=all_headers)
        response = self.connection.getresponse()
        data = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def get_json(self, path: str) -> Any:
        response = self.request("GET", path)
        assert response.status == 200, (response.status, response.body)
        return response.json()

    def upload(self, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
        """Upload code as the server does (dstack.agent.codestore): the contents the agent lacks, then
        the manifest; returns the code hash."""
        manifest, blobs = code_manifest(members)
        response = self.send_code(manifest, blobs)
        assert response.status == 201, (response.status, response.body)
        return hashlib.sha256(manifest).hexdigest()

    def send_code(self, manifest: bytes, blobs: dict[str, bytes]) -> Response:
        """The three requests of a code upload; the manifest's answer (or the first failing one)."""
        wanted = b"".join(BLOB_HEADER.pack(bytes.fromhex(h), len(data)) for h, data in blobs.items())
        response = self.request("POST", "/api/code/missing", body=wanted)
        assert response.status == 200, (response.status, response.body)
        missing = response.json()["missing"]
        if missing:
            response = self.request(
                "POST", "/api/code/blobs", body=blob_stream({h: blobs[h] for h in missing})
            )
            if response.status != 201:
                return response
        return self.request("PUT", f"/api/code/{hashlib.sha256(manifest).hexdigest()}", body=manifest)

    def submit(self, commands: list[str], **fields: Any) -> dict[str, Any]:
        spec = {"id": fields.pop("id", new_job_id()), "run_name": "test-run", "commands": commands, **fields}
        response = self.request("POST", "/api/jobs", body=spec)
        assert response.status == 201, (response.status, response.body)
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get_json(f"/api/jobs/{job_id}")

    def wait_status(self, job_id: str, statuses: Iterable[str], timeout: float = 20) -> dict[str, Any]:
        wanted = tuple(statuses)

        def reached() -> dict[str, Any] | None:
            state = self.job(job_id)
            return state if state["status"] in wanted else None

        return wait_for(reached, timeout, f"job {job_id} to be {'/'.join(wanted)}")

    def wait_final(self, job_id: str, timeout: float = 20) -> dict[str, Any]:
        return self.wait_status(job_id, FINAL, timeout)

    def stop(self, job_id: str, abort: bool = False, grace_seconds: float | None = None) -> Response:
        body: dict[str, Any] = {"abort": abort}
        if grace_seconds is not None:
            body["grace_seconds"] = grace_seconds
        return self.request("POST", f"/api/jobs/{job_id}/stop", body=body)

    def read_logs_now(self, job_id: str) -> bytes:
        """The output the agent holds now."""
        response = self.request("GET", f"/api/jobs/{job_id}/logs?offset=0")
        assert response.status == 200, (response.status, response.body)
        return response.body

    def read_logs(
        self,
        job_id: str,
        limit: int | None = None,
        timeout: float = 30,
        sink: Callable[[bytes], None] | None = None,
    ) -> bytes:
        """Follow the job's output from offset 0 until it is final and fully read."""
        chunks: list[bytes] = []
        offset = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            query = f"offset={offset}&wait=5" + (f"&limit={limit}" if limit else "")
            response = self.request("GET", f"/api/jobs/{job_id}/logs?{query}")
            assert response.status == 200, (response.status, response.body)
            end = int(response.headers["x-log-end"])
            assert end == offset + len(response.body)
            (sink or chunks.append)(response.body)
            offset = end
            if response.headers["x-job-status"] in FINAL and end == int(response.headers["x-log-size"]):
                return b"".join(chunks)
        raise AssertionError(f"Timed out reading the output of job {job_id}")


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:12]


class AgentProcess:
    """A real agent started as a subprocess on 127.0.0.1, any free port."""

    def __init__(
        self,
        work_dir: Path,
        # Set DSTACK_TEST_AGENT_PYTHON to run the whole suite against another interpreter (e.g. 3.9).
        python: str = os.environ.get("DSTACK_TEST_AGENT_PYTHON", sys.executable),
        extra_args: Iterable[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.log_path = work_dir.parent / f"{work_dir.name}-agent-{uuid.uuid4().hex[:6]}.log"
        process_env = agent_env() if env is None else env
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [python, "-m", "dstack.agent", "--work-dir", str(work_dir), "--port", "0", *extra_args],
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.port = 0

    def wait_ready(self, timeout: float = 20) -> AgentProcess:
        agent_file = self.work_dir / "agent.json"

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"The agent exited with {self.process.returncode}: {self.log()}")
            try:
                info = json.loads(agent_file.read_text())
            except (OSError, ValueError):
                return False
            return info["pid"] == self.process.pid

        wait_for(ready, timeout, "the agent to write agent.json")
        self.port = json.loads(agent_file.read_text())["port"]
        return self

    def client(self, token: str | None = TOKEN) -> AgentClient:
        return AgentClient(self.port, token)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DSTACK_AGENT_TOKEN"] = TOKEN
    env.update(extra)
    return env


def job_processes(job_id: str) -> list[int]:
    """Live processes whose environment says they belong to the job (zombies have no environment)."""
    entry = f"DSTACK_JOB_ID={job_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


BLOB_HEADER = struct.Struct(">32sQ")


def code_manifest(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> tuple[bytes, dict[str, bytes]]:
    """The manifest (dstack.code.manifest's format, entries as given: hostile ones too) and contents of
    members built with file_member, dir_member and link_member."""
    entries: list[list[Any]] = []
    blobs: dict[str, bytes] = {}
    for info, data in members:
        if info.isdir():
            entries.append([info.name, "d", info.mode, 0, ""])
        elif info.issym():
            entries.append([info.name, "l", info.mode, 0, info.linkname])
        elif info.isfile():
            content = data or b""
            sha256 = hashlib.sha256(content).hexdigest()
            blobs[sha256] = content
            entries.append([info.name, "f", info.mode, len(content), sha256])
        else:  # a kind the format does not have (hard link, device): the agent must refuse it
            entries.append([info.name, info.type.decode(), info.mode, 0, info.linkname])
    return json.dumps({"format": "dstack-code/1", "entries": entries}).encode(), blobs


def blob_stream(blobs: dict[str, bytes]) -> bytes:
    return b"".join(BLOB_HEADER.pack(bytes.fromhex(h), len(data)) + data for h, data in blobs.items())


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def file_member(
    name: str, data: bytes, mode: int = 0o644, mtime: int = 1_600_000_000
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = mtime
    return info, data


def dir_member(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def link_member(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None
