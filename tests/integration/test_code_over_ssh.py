"""A fleet host's agent through an SSH forward, as the server reaches it: code goes as an agent-API
conversation (which contents do you lack? then one streamed request), jobs are submitted in batches and
followed through the agent's event stream, and a second tree that shares contents sends only the new ones."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from dstack.code.manifest import code_hash, encode_manifest, parse_manifest
from dstack.server.backends.agent_client import AgentClient
from dstack.server.remote import hostagent
from dstack.server.remote.artifact import agent_zipapp
from dstack.server.ssh import SSHConnection, SSHPool, SSHTarget
from tests.infra.sshhosts import ClientKey, SSHHost

TOKEN = "code-over-ssh-token"
OUTPUT_TIMEOUT = 120.0  # generous (the machine is shared); under pytest-timeout's 300 s, to say why


def _tree(folder: Path, files: dict[str, bytes]) -> tuple[bytes, list[tuple[Path, str, int]]]:
    """A manifest of `files` and the (file, sha256, size) of each content, as the server's store has them."""
    entries, blobs = [], {}
    for name in sorted(files):
        data = files[name]
        sha256 = hashlib.sha256(data).hexdigest()
        path = folder / sha256
        path.write_bytes(data)
        blobs[sha256] = (path, sha256, len(data))
        entries.append((name, "f", 0o644, len(data), sha256))
    return encode_manifest(entries), list(blobs.values())


class _Folder:
    """Contents a file each, named by their sha256 (the server's store for big ones)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def file(self, sha256: str) -> str:
        return str(self.folder / sha256)

    def read_small(self, sha256: str, size: int) -> bytes:
        return (self.folder / sha256).read_bytes()


async def _send(client: AgentClient, manifest: bytes, blobs: list[tuple[Path, str, int]]) -> list[str]:
    """The server's provisioning conversation (services/code.send_to_agent); returns what was sent."""
    digest = code_hash(manifest)
    if await client.has_code(digest):
        return []
    lacking = await client.missing_blobs(parse_manifest(manifest).blobs)
    source = _Folder(blobs[0][0].parent)
    await client.upload_blobs([(sha, size) for _, sha, size in blobs if sha in lacking], source)
    await client.put_manifest(digest, manifest)
    return lacking


async def _output(client: AgentClient, job_id: str, connection: SSHConnection) -> tuple[bytes, str]:
    data, offset = b"", 0
    deadline = time.monotonic() + OUTPUT_TIMEOUT
    while time.monotonic() < deadline:
        chunk = await client.logs(job_id, offset=offset, wait=5.0)
        data += chunk.data
        offset = chunk.end
        if chunk.finished:
            return data, chunk.status
    # What the agent says of the job, and its log on the host: what a failure here needs to be understood.
    job = await client.get_job(job_id)
    log = await connection.run(["tail", "-n", "40", f"{hostagent.AGENT_DIR}/agent.log"])
    raise AssertionError(f"job {job_id} did not finish: {job}; output {data!r}; agent log:\n{log.stdout!r}")


def test_code_and_jobs_reach_a_fleet_host_through_its_forward(
    make_ssh_host: object, client_key: ClientKey, tmp_path: Path
) -> None:
    host: SSHHost = make_ssh_host()  # type: ignore[operator]
    artifact = agent_zipapp(tmp_path / "artifacts")
    store = tmp_path / "store"
    store.mkdir()
    big = b"weights " * 100_000  # over the size the blob stream gathers: sent from its file
    first, first_blobs = _tree(store, {"train.py": b"print('train')\n", "data/weights.bin": big})
    second, second_blobs = _tree(store, {"train.py": b"print('train v2')\n", "data/weights.bin": big})
    pool = SSHPool(tmp_path / "server" / "ssh")

    async def scenario() -> None:
        target = SSHTarget(host.address, port=host.port, user="root", identity_file=str(client_key.path))
        connection = pool.connection(target)
        await connection.open(pin=True)
        # The ssh backend's own steps: look at the host, ship the agent, start it (its port on loopback).
        found = await hostagent.probe(connection)
        await hostagent.ship(connection, found, [artifact])
        port = await hostagent.start(connection, TOKEN, artifact, None)
        socket_path = await connection.forward("127.0.0.1", port)
        client = AgentClient("http://agent", TOKEN, socket_path=str(socket_path))
        try:
            sent = await _send(client, first, first_blobs)
            assert sorted(sent) == sorted(sha for _, sha, _ in first_blobs)
            assert await _send(client, first, first_blobs) == []  # the host has it: nothing travels
            sent = await _send(client, second, second_blobs)
            assert sent == [hashlib.sha256(b"print('train v2')\n").hexdigest()]  # the shared content stays

            command = "cat train.py; sha256sum data/weights.bin | cut -c1-16"
            jobs: list[dict[str, Any]] = [
                {"id": f"ssh-job-{i}", "run_name": "r", "commands": [command], "code_hash": code_hash(tree)}
                for i, tree in enumerate((first, second))
            ]
            # Submitted at once: they go to the agent in one batch request.
            await asyncio.gather(*(client.submit_job(job) for job in jobs))
            results = await asyncio.gather(*(_output(client, job["id"], connection) for job in jobs))
            weights = hashlib.sha256(big).hexdigest()[:16].encode()
            assert results[0] == (b"print('train')\n" + weights + b"\n", "done")
            assert results[1] == (b"print('train v2')\n" + weights + b"\n", "done")
            await asyncio.gather(*(client.delete_job(job["id"]) for job in jobs))
        finally:
            await client.close()
            await pool.close()

    asyncio.run(scenario())
