"""--reload batches on a real agent: puts, deletions, replacements, and no way out of the code folder."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testkit import (
    AgentClient,
    AgentProcess,
    blob_stream,
    code_manifest,
    dir_member,
    file_member,
    link_member,
    wait_for,
)


def delete_member(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.pax_headers = {"DSTACK.delete": "1"}
    return info, b""


@pytest.fixture
def job(client: AgentClient, shared_agent: AgentProcess) -> Iterator[tuple[str, Path]]:
    """A running job whose code holds keep.txt, gone.txt and a folder old/ with a file in it."""
    archive = [
        file_member("keep.txt", b"keep\n"),
        file_member("gone.txt", b"gone\n"),
        dir_member("old"),
        file_member("old/inner.txt", b"inner\n"),
    ]
    state = client.submit(["touch started; sleep 60"], code_hash=client.upload(archive))
    client.wait_status(state["id"], ["running"])
    code = shared_agent.work_dir / "jobs" / state["id"] / "code"
    wait_for(lambda: (code / "started").exists(), 20, "the job's commands to start")
    yield state["id"], code
    client.stop(state["id"], abort=True)
    client.wait_final(state["id"])


def send(client: AgentClient, job_id: str, members: list) -> tuple[int, dict]:
    """A batch as the server relays one: the files' contents into the agent's store first, then the
    change list (deletions, then entries in the manifest's form; hostile ones as given)."""
    deletes = [info.name for info, _ in members if "DSTACK.delete" in info.pax_headers]
    others = [(info, data) for info, data in members if "DSTACK.delete" not in info.pax_headers]
    manifest, blobs = code_manifest(others)
    if blobs:
        assert client.request("POST", "/api/code/blobs", body=blob_stream(blobs)).status == 201
    puts = json.loads(manifest)["entries"]
    response = client.request("POST", f"/api/jobs/{job_id}/files", body={"delete": deletes, "put": puts})
    return response.status, response.json()


def test_a_batch_puts_deletes_and_replaces(client: AgentClient, job: tuple[str, Path]) -> None:
    job_id, code = job
    status, result = send(
        client,
        job_id,
        [
            delete_member("gone.txt"),
            delete_member("old"),
            delete_member("never-was.txt"),
            file_member("keep.txt", b"edited\n", mode=0o600),
            dir_member("new", mode=0o750),
            file_member("new/deep/file.py", b"print(1)\n", mode=0o755),
            link_member("new/link", "deep/file.py"),
        ],
    )
    assert status == 200, result
    assert result == {"put": 4, "deleted": 3, "errors": []}
    assert (code / "keep.txt").read_bytes() == b"edited\n"
    assert stat.S_IMODE((code / "keep.txt").stat().st_mode) == 0o600
    assert not (code / "gone.txt").exists() and not (code / "old").exists()
    assert stat.S_IMODE((code / "new").stat().st_mode) == 0o750
    assert (code / "new" / "link").read_bytes() == b"print(1)\n"
    assert os.access(code / "new" / "deep" / "file.py", os.X_OK)
    assert not [p for p in code.rglob("*") if p.name.startswith(".dstack-sync-")]

    # A folder takes a file's place and the other way round; a symlink is replaced, not written through.
    status, result = send(
        client,
        job_id,
        [
            dir_member("keep.txt"),
            file_member("keep.txt/inside.txt", b"x"),
            file_member("new", b"now a file\n"),
            file_member("link-target.txt", b"target\n"),
            link_member("alias", "link-target.txt"),
        ],
    )
    assert status == 200 and not result["errors"], result
    status, result = send(client, job_id, [file_member("alias", b"replaced the link\n")])
    assert status == 200 and not result["errors"], result
    assert (code / "keep.txt" / "inside.txt").read_bytes() == b"x"
    assert (code / "new").read_bytes() == b"now a file\n"
    assert not (code / "alias").is_symlink()
    assert (code / "link-target.txt").read_bytes() == b"target\n"


@pytest.mark.parametrize(
    "members",
    [
        [file_member("../escaped", b"x")],
        [file_member("/tmp/absolute", b"x")],
        [delete_member("../../agent.json")],
        [link_member("evil", "../../..")],
        [link_member("evil", "sub/../.."), file_member("evil/escaped", b"x")],
        [link_member("hard", "keep.txt", hard=True)],
    ],
)
def test_unsafe_batches_are_refused_whole(client: AgentClient, job: tuple[str, Path], members: list) -> None:
    job_id, code = job
    status, result = send(client, job_id, [file_member("first.txt", b"x"), *members])
    assert status == 400
    assert result["error"].startswith("The batch of changes was refused")
    assert not (code / "first.txt").exists()  # nothing of a refused batch is written


def test_a_path_through_a_symlink_the_task_made_cannot_leave(
    client: AgentClient, job: tuple[str, Path], tmp_path: Path
) -> None:
    job_id, code = job
    outside = tmp_path / "outside"
    outside.mkdir()
    (code / "escape").symlink_to(outside)  # as the task itself could do
    status, result = send(
        client,
        job_id,
        [
            file_member("escape/pwned", b"x"),
            delete_member("escape/../keep.txt"),
            file_member("ok.txt", b"ok"),
        ],
    )
    assert status == 400  # ".." never passes the archive checks
    status, result = send(client, job_id, [file_member("escape/pwned", b"x"), file_member("ok.txt", b"ok")])
    assert status == 200
    assert result["put"] == 1
    assert result["errors"] == [{"path": "escape/pwned", "error": "it leads outside the code folder"}]
    assert list(outside.iterdir()) == []
    assert (code / "ok.txt").read_bytes() == b"ok"
    # A link that points through the task's link to the outside is refused too.
    status, result = send(client, job_id, [link_member("sneaky", "escape/anything")])
    assert result["errors"] == [{"path": "sneaky", "error": "the symlink points outside the code folder"}]
    # Deleting the link deletes the link, not what it points to.
    (outside / "precious").write_text("still here")
    status, result = send(client, job_id, [delete_member("escape")])
    assert result["deleted"] == 1 and not (code / "escape").exists()
    assert (outside / "precious").read_text() == "still here"


def test_compare_says_what_the_job_already_has(client: AgentClient, job: tuple[str, Path]) -> None:
    job_id, _ = job
    send(client, job_id, [link_member("link", "keep.txt")])
    entries = [
        ["keep.txt", "file", 5],
        ["keep.txt", "file", 6],
        ["old", "dir", None],
        ["old/inner.txt", "dir", None],
        ["link", "symlink", "keep.txt"],
        ["link", "symlink", "elsewhere"],
        ["missing.txt", "file", 1],
    ]
    response = client.request("POST", f"/api/jobs/{job_id}/files/compare", body={"entries": entries})
    assert response.status == 200, response.body
    assert response.json()["results"] == [
        hashlib.sha256(b"keep\n").hexdigest(),
        False,
        True,
        False,
        True,
        False,
        False,
    ]
    for bad in (["../x", "file", 1], ["/etc/passwd", "file", 1], ["a", "fifo", 1], "nope"):
        response = client.request("POST", f"/api/jobs/{job_id}/files/compare", body={"entries": [bad]})
        assert response.status == 400, bad
        assert response.json()["error"]


def test_only_a_running_job_takes_changes(client: AgentClient) -> None:
    response = client.request("POST", "/api/jobs/no-such-job/files", body={"delete": ["a"]})
    assert response.status == 404
    state = client.submit(["true"])
    client.wait_final(state["id"])
    response = client.request("POST", f"/api/jobs/{state['id']}/files", body={"delete": ["a"]})
    assert response.status == 410
    assert "takes no more changes" in response.json()["error"]


def test_a_malformed_batch_is_one_sentence(client: AgentClient, job: tuple[str, Path]) -> None:
    job_id, _ = job
    for body in (
        b"this is not JSON" * 100,
        {"put": "nope"},
        {"other": []},
        {"put": [["a.txt", "f", 420, 1, "x"]]},
    ):
        response = client.request("POST", f"/api/jobs/{job_id}/files", body=body)
        assert response.status == 400, body
        assert response.json()["error"]


def test_a_content_missing_from_the_store_is_one_error_not_a_broken_file(
    client: AgentClient, job: tuple[str, Path]
) -> None:
    job_id, code = job
    unknown = hashlib.sha256(b"never uploaded").hexdigest()
    put = [["unknown.txt", "f", 0o644, 14, unknown], ["known", "d", 0o755, 0, ""]]
    response = client.request("POST", f"/api/jobs/{job_id}/files", body={"put": put})
    assert response.status == 200
    assert response.json()["put"] == 1
    assert response.json()["errors"][0]["path"] == "unknown.txt"
    assert not (code / "unknown.txt").exists() and (code / "known").is_dir()
