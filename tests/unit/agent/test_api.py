"""The HTTP surface: health, auth, errors, keep-alive, code upload."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import uuid
from collections.abc import Callable

from agent_testkit import (
    BLOB_HEADER,
    TOKEN,
    AgentClient,
    AgentProcess,
    blob_stream,
    code_manifest,
    dir_member,
    file_member,
    new_job_id,
)

from dstack.agent import __version__


def test_health_needs_no_token(shared_agent: AgentProcess) -> None:
    anonymous = shared_agent.client(token=None)
    response = anonymous.request("GET", "/api/health")
    assert response.status == 200
    assert response.json() == {
        "service": "dstack-agent",
        "version": __version__,
        "pid": shared_agent.process.pid,
    }


def test_every_other_endpoint_needs_the_token(shared_agent: AgentProcess) -> None:
    for token in (None, "wrong-token"):
        client = shared_agent.client(token=token)
        for method, path in [("GET", "/api/host"), ("GET", "/api/jobs"), ("HEAD", "/api/code/" + "0" * 64)]:
            response = client.request(method, path)
            assert response.status == 401, (method, path, token)
            if method != "HEAD":
                assert "token" in response.json()["error"]
        response = client.request("POST", "/api/jobs", body={"id": "x", "run_name": "r", "commands": []})
        assert response.status == 401
        client.close()


def test_host_facts(client: AgentClient, shared_agent: AgentProcess) -> None:
    facts = client.get_json("/api/host")
    assert facts["cpus"] >= 1
    assert facts["memory_bytes"] > 0
    assert facts["disk_free_bytes"] > 0
    assert facts["arch"] == os.uname().machine
    assert facts["hostname"] == socket.gethostname()
    assert facts["gpus"] == []


def test_errors_are_json_sentences(client: AgentClient) -> None:
    assert client.request("GET", "/api/nope").status == 404
    response = client.request("DELETE", "/api/host")
    assert response.status == 405
    assert response.json()["error"]
    response = client.request("GET", "/api/jobs/no-such-job")
    assert response.status == 404
    assert response.json() == {"error": "Job no-such-job not found"}
    response = client.request("POST", "/api/jobs", body=b"{not json")
    assert response.status == 400
    assert "JSON" in response.json()["error"]


def test_job_spec_validation(client: AgentClient) -> None:
    bad_specs = [
        {"id": "../x", "run_name": "r", "commands": []},
        {"id": "..", "run_name": "r", "commands": []},
        {"id": "a" * 65, "run_name": "r", "commands": []},
        {"id": "ok", "run_name": "r", "commands": "echo"},
        {"id": "ok", "run_name": "r", "commands": [], "working_dir": "/etc"},
        {"id": "ok", "run_name": "r", "commands": [], "working_dir": "a/../../x"},
        {"id": "ok", "run_name": "r", "commands": [], "env": {"A": 1}},
        {"id": "ok", "run_name": "r", "commands": [], "max_duration": -1},
        {"id": "ok", "run_name": "r", "commands": [], "unexpected": True},
        {"id": "ok", "run_name": "r", "commands": [], "code_hash": "abc"},
    ]
    for spec in bad_specs:
        response = client.request("POST", "/api/jobs", body=spec)
        assert response.status == 400, spec
        message = response.json()["error"]
        assert message[0].isupper() and "\n" not in message
    assert client.request("GET", "/api/jobs/ok").status == 404


def test_oversized_json_body_is_refused(client: AgentClient) -> None:
    huge = b"[" + b"0," * (600 * 1024) + b"0]"
    response = client.request("POST", "/api/jobs", body=huge)
    assert response.status == 413
    assert client.request("GET", "/api/jobs").status == 200


def test_refused_big_upload_still_gets_its_answer(shared_agent: AgentProcess) -> None:
    # A 401 for a body too big to drain: the agent answers, then closes without resetting the answer away.
    client = shared_agent.client(token="wrong")
    response = client.request("PUT", "/api/code/" + "a" * 64, body=b"x" * (8 * 1024 * 1024))
    assert response.status == 401
    assert response.headers["connection"] == "close"


def test_keep_alive_connection_is_reused(client: AgentClient) -> None:
    client.request("GET", "/api/jobs")
    sock = client.connection.sock
    for _ in range(5):
        assert client.request("GET", "/api/host").status == 200
        assert client.request("GET", "/api/jobs/missing").status == 404
    assert client.connection.sock is sock


def test_malformed_request_gets_json_error(shared_agent: AgentProcess) -> None:
    with socket.create_connection(("127.0.0.1", shared_agent.port), timeout=10) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") or head.startswith(b"HTTP/1.0 400")
    assert "error" in json.loads(body)


def test_code_upload_sends_only_what_the_agent_lacks(client: AgentClient, shared_agent: AgentProcess) -> None:
    unique = uuid.uuid4().hex.encode()
    manifest, blobs = code_manifest([file_member("hello.txt", b"hi " + unique), file_member("b.txt", unique)])
    code_hash = hashlib.sha256(manifest).hexdigest()
    assert client.request("HEAD", f"/api/code/{code_hash}").status == 404
    # The manifest is refused while a content it names is missing.
    refused = client.request("PUT", f"/api/code/{code_hash}", body=manifest)
    assert refused.status == 400 and "not uploaded" in refused.json()["error"]
    assert client.send_code(manifest, blobs).status == 201
    assert client.request("HEAD", f"/api/code/{code_hash}").status == 200
    # Idempotent; and a second tree sharing a content lacks only the new one.
    assert client.send_code(manifest, blobs).status == 201
    _, other_blobs = code_manifest(
        [file_member("again.txt", unique), file_member("new.txt", b"new" + unique)]
    )
    wanted = b"".join(BLOB_HEADER.pack(bytes.fromhex(h), len(d)) for h, d in other_blobs.items())
    missing = client.request("POST", "/api/code/missing", body=wanted).json()["missing"]
    assert missing == [hashlib.sha256(b"new" + unique).hexdigest()]
    stored = shared_agent.work_dir / "code" / "blobs" / missing[0][:2]
    assert not (stored / missing[0]).exists()


def test_a_content_that_does_not_match_its_hash_is_not_kept(
    client: AgentClient, shared_agent: AgentProcess
) -> None:
    wrong_hash = hashlib.sha256(b"something else " + uuid.uuid4().hex.encode()).hexdigest()
    response = client.request("POST", "/api/code/blobs", body=blob_stream({wrong_hash: b"the real bytes"}))
    assert response.status == 400
    assert "does not match its hash" in response.json()["error"]
    wanted = BLOB_HEADER.pack(bytes.fromhex(wrong_hash), len(b"the real bytes"))
    assert client.request("POST", "/api/code/missing", body=wanted).json()["missing"] == [wrong_hash]
    folder = shared_agent.work_dir / "code" / "blobs" / wrong_hash[:2]
    assert not folder.exists() or not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    # A manifest whose bytes do not match the hash it is sent as is refused too.
    manifest, _ = code_manifest([dir_member("d")])
    assert client.request("PUT", f"/api/code/{wrong_hash}", body=manifest).status == 400
    assert client.request("HEAD", f"/api/code/{wrong_hash}").status == 404


def test_code_upload_needs_content_length_and_a_hash(shared_agent: AgentProcess, client: AgentClient) -> None:
    assert client.request("PUT", "/api/code/not-a-hash", body=b"x").status == 400
    connection = http.client.HTTPConnection("127.0.0.1", shared_agent.port, timeout=10)
    connection.putrequest("PUT", "/api/code/" + "a" * 64)
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411
    assert "Content-Length" in json.loads(response.read())["error"]
    connection.close()


def test_job_with_unknown_code_is_refused(client: AgentClient) -> None:
    code_hash = hashlib.sha256(b"never uploaded").hexdigest()
    spec = {"id": new_job_id(), "run_name": "r", "commands": ["true"], "code_hash": code_hash}
    response = client.request("POST", "/api/jobs", body=spec)
    assert response.status == 400
    assert response.json()["error"] == f"Code {code_hash} has not been uploaded"


def test_code_upload_over_the_limit(start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent(extra_args=["--max-code-bytes", "1000"])
    client = agent.client()
    content = b"x" * 5000
    response = client.request(
        "POST", "/api/code/blobs", body=blob_stream({hashlib.sha256(content).hexdigest(): content})
    )
    assert response.status == 413
    assert client.request("GET", "/api/health").status == 200
