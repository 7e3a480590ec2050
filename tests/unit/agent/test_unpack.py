"""Code from the store: a job's folder built from a manifest, and every manifest that could write outside
the code folder refused before anything is written."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_testkit import (
    AgentClient,
    AgentProcess,
    code_manifest,
    dir_member,
    file_member,
    link_member,
    wait_for,
)

from dstack.agent.codestore import CodeStore
from dstack.agent.unpack import FILE, SYMLINK, Item, UnpackError, build_tree, check_items


def test_good_code_keeps_content_modes_and_inside_symlinks(
    client: AgentClient, shared_agent: AgentProcess
) -> None:
    members = [
        dir_member("pkg"),
        dir_member("empty"),
        file_member("pkg/run.sh", b"#!/bin/sh\necho ran\n", mode=0o755),
        file_member("pkg/setuid", b"x", mode=0o4755),
        dir_member("data"),
        dir_member("data/nested"),
        file_member("data/nested/file.txt", b"nested\n"),
        link_member("pkg/link-to-nested", "../data/nested/file.txt"),
        link_member("self", "."),
    ]
    job = client.submit(["./pkg/run.sh", "cat pkg/link-to-nested"], code_hash=client.upload(members))
    state = client.wait_final(job["id"])
    assert state["status"] == "done", client.read_logs(job["id"])
    assert client.read_logs(job["id"]) == b"ran\nnested\n"
    code = shared_agent.work_dir / "jobs" / job["id"] / "code"
    assert (code / "empty").is_dir()
    assert stat.S_IMODE((code / "pkg" / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((code / "pkg" / "setuid").stat().st_mode) == 0o755
    assert os.readlink(code / "pkg" / "link-to-nested") == "../data/nested/file.txt"


def test_a_job_cannot_change_what_later_jobs_get(client: AgentClient) -> None:
    # Its files are copies, not links into the store: writing or chmod-ing them leaves the store alone.
    code_hash = client.upload([file_member("notes.txt", b"original\n", mode=0o444)])
    first = client.submit(["chmod u+w notes.txt", "echo changed > notes.txt"], code_hash=code_hash)
    assert client.wait_final(first["id"])["status"] == "done", client.read_logs(first["id"])
    second = client.submit(["cat notes.txt", "stat -c %a notes.txt"], code_hash=code_hash)
    assert client.wait_final(second["id"])["status"] == "done"
    assert client.read_logs(second["id"]) == b"original\n444\n"


@pytest.mark.parametrize(
    ("members", "reason_part"),
    [
        ([file_member("../escaped", b"x")], "leads outside"),
        ([file_member("ok/../../escaped", b"x")], "leads outside"),
        ([file_member("{outside}/absolute", b"x")], "absolute path"),
        ([file_member("./not/normalised", b"x")], "not a normalised"),
        ([link_member("evil", "../../../..")], "points outside"),
        ([link_member("evil", "{outside}")], "relative target"),
        ([link_member("evil", "sub/../.."), file_member("evil/escaped", b"x")], "points outside"),
        ([link_member("hop", "."), link_member("evil", "hop/..")], "points outside"),
        # Each link looks harmless lexically; together they climb out.
        ([dir_member("d"), link_member("a", "d/.."), link_member("b", "a/../escaped")], "points outside"),
        (
            [dir_member("sub"), link_member("inside", "sub"), file_member("inside/file", b"x")],
            "through a symlink",
        ),
        ([file_member("target", b"x"), link_member("hard", "{outside}/hard", hard=True)], "special file"),
        ([file_member("same", b"x"), file_member("same", b"y")], "twice"),
    ],
)
def test_malicious_code_is_refused_and_writes_nothing(
    client: AgentClient, shared_agent: AgentProcess, tmp_path: Path, members: list, reason_part: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for info, _ in members:
        info.name = info.name.replace("{outside}", str(outside))
        info.linkname = info.linkname.replace("{outside}", str(outside))
    manifest, blobs = code_manifest(members)
    response = client.send_code(manifest, blobs)
    assert response.status == 400
    assert response.json()["error"].startswith("The code was refused: ")
    assert reason_part in response.json()["error"]
    assert list(outside.iterdir()) == []
    # Stored only once safe: a job naming it cannot start.
    code_hash = hashlib.sha256(manifest).hexdigest()
    assert not (shared_agent.work_dir / "code" / "manifests" / code_hash).exists()
    refused = client.request(
        "POST",
        "/api/jobs",
        body={"id": "j-" + code_hash[:8], "run_name": "r", "commands": ["ls"], "code_hash": code_hash},
    )
    assert refused.status == 400


def test_a_manifest_damaged_in_the_store_is_refused_when_the_folder_is_built(tmp_path: Path) -> None:
    # The checks run again where it counts: on the stored file, right before writing.
    store = CodeStore(tmp_path / "code")
    manifest, blobs = code_manifest([file_member("ok.txt", b"ok")])
    (content,) = blobs.items()
    path = store.blob_path(content[0])
    path.parent.mkdir(parents=True)
    path.write_bytes(content[1])
    code_hash = "f" * 64
    (tmp_path / "code" / "manifests" / code_hash).write_bytes(manifest.replace(b"ok.txt", b"../ok.txt"))
    (tmp_path / "out").mkdir()
    with pytest.raises(UnpackError, match="leads outside"):
        store.assemble(code_hash, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "ok.txt").exists()


def test_symlink_loops_are_refused() -> None:
    items = [Item("a", SYMLINK, 0o777, 0, "b/x"), Item("b", SYMLINK, 0o777, 0, "a/y")]
    with pytest.raises(UnpackError, match="points outside"):
        check_items(items)


def test_only_folders_files_and_symlinks_are_code() -> None:
    for kind in ("c", "b", "p", "h"):  # devices, fifos, hard links: the format has no such kinds
        with pytest.raises(UnpackError, match="special file"):
            check_items([Item("special", kind, 0o644, 0, "")])


def test_read_only_folders_are_filled_before_their_mode_is_set(tmp_path: Path) -> None:
    store = CodeStore(tmp_path / "code")
    manifest, blobs = code_manifest([dir_member("ro", mode=0o555), file_member("ro/file", b"content")])
    for sha256, data in blobs.items():
        store.blob_path(sha256).parent.mkdir(parents=True, exist_ok=True)
        store.blob_path(sha256).write_bytes(data)
    code_hash = hashlib.sha256(manifest).hexdigest()
    store.store_manifest(code_hash, manifest, 1 << 20)
    (tmp_path / "out").mkdir()
    store.assemble(code_hash, tmp_path / "out")
    assert (tmp_path / "out" / "ro" / "file").read_bytes() == b"content"
    assert stat.S_IMODE((tmp_path / "out" / "ro").stat().st_mode) == 0o555
    assert FILE == "f"


def _snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry under root: kind, mode and content (or link target)."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            found[rel] = ("l", mode, os.readlink(path))
        elif path.is_dir():
            found[rel] = ("d", mode, "")
        else:
            found[rel] = ("f", mode, path.read_bytes())
    return found


def _stored(store: CodeStore, members: list) -> str:
    manifest, blobs = code_manifest(members)
    for sha256, data in blobs.items():
        store.blob_path(sha256).parent.mkdir(parents=True, exist_ok=True)
        store.blob_path(sha256).write_bytes(data)
    code_hash = hashlib.sha256(manifest).hexdigest()
    store.store_manifest(code_hash, manifest, 1 << 20)
    return code_hash


def test_a_spare_tree_patched_for_other_code_is_exactly_a_fresh_build_of_it(tmp_path: Path) -> None:
    store = CodeStore(tmp_path / "code")
    before = _stored(
        store,
        [
            file_member("same.txt", b"same"),
            file_member("edited.txt", b"old"),
            file_member("gone.txt", b"gone"),
            file_member("mode.sh", b"#!/bin/sh\n", mode=0o644),
            dir_member("becomes-file"),
            file_member("becomes-file/inner.txt", b"inner"),
            file_member("becomes-link", b"x"),
            dir_member("ro", mode=0o555),
            file_member("ro/kept.txt", b"kept"),
        ],
    )
    after = _stored(
        store,
        [
            file_member("same.txt", b"same"),
            file_member("edited.txt", b"new content"),
            file_member("mode.sh", b"#!/bin/sh\n", mode=0o755),
            file_member("becomes-file", b"now a file"),
            link_member("becomes-link", "same.txt"),
            dir_member("ro", mode=0o555),
            file_member("ro/kept.txt", b"kept"),
            file_member("ro/added.txt", b"added"),
            dir_member("new-dir"),
        ],
    )
    first = tmp_path / "job1"
    first.mkdir()
    store.assemble(before, first)  # built from the store; a spare of `before` follows in the background
    second = tmp_path / "job2"
    second.mkdir()
    store.assemble(after, second)  # the spare of `before`, patched
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    build_tree(store.items(after), store.blob_path, fresh)
    assert _snapshot(second) == _snapshot(fresh)
    assert _snapshot(first)["edited.txt"] == ("f", 0o644, b"old")  # the first job's copy is its own
    # A third job of the same code gets a spare of it, made after the second took its own.
    third = tmp_path / "job3"
    third.mkdir()
    store.assemble(after, third)
    assert _snapshot(third) == _snapshot(fresh)


def _job_folder(root: Path, name: str) -> Path:
    folder = root / name / "code"
    folder.mkdir(parents=True)
    return folder


def test_a_finished_jobs_folder_serves_the_next_job_with_what_the_job_changed_undone(tmp_path: Path) -> None:
    store = CodeStore(tmp_path / "code")
    members = [
        file_member("keep.txt", b"keep"),
        file_member("edited.txt", b"12345"),
        file_member("gone.txt", b"gone"),
        file_member("linked.txt", b"linked"),
        dir_member("pkg"),
        file_member("pkg/run.sh", b"#!/bin/sh\n", mode=0o755),
        link_member("pkg/link", "../keep.txt"),
    ]
    code = _stored(store, members)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    build_tree(store.items(code), store.blob_path, fresh)
    jobs, outside = tmp_path / "jobs", tmp_path / "outside"
    outside.mkdir()
    store.assemble(code, _job_folder(jobs, "1"))  # built from the store; a spare follows in the background
    assert store.spares.wait_idle(30)
    second = _job_folder(jobs, "2")
    store.assemble(code, second)  # the spare
    assert store.spares.wait_idle(30)  # (and the next spare, made when it was taken)
    inode = second.stat().st_ino
    # What a job may do to its folder, down to an edit that keeps the size and puts the mtime back.
    edited = second / "edited.txt"
    before = edited.stat()
    with open(edited, "r+b") as f:
        f.write(b"EVIL!")
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    (second / "gone.txt").unlink()
    (second / "added.txt").write_bytes(b"added")
    (second / "pkg" / "made").mkdir()
    (second / "pkg" / "made" / "deep.txt").write_text("x")
    os.chmod(second / "pkg" / "run.sh", 0o700)
    (second / "pkg" / "link").unlink()
    (second / "pkg" / "link").symlink_to("/etc/passwd")
    os.link(second / "linked.txt", outside / "handle")  # a way back in, kept after the job
    assert store.spares.recycle(second)
    assert store.spares.wait_idle(30)
    third = _job_folder(jobs, "3")
    store.assemble(code, third)
    assert third.stat().st_ino == inode  # the second job's folder, given back
    assert _snapshot(third) == _snapshot(fresh)
    (outside / "handle").write_bytes(b"EVIL!!")
    assert (third / "linked.txt").read_bytes() == b"linked"


def test_a_finished_jobs_folder_whose_folder_changed_mode_is_not_reused(tmp_path: Path) -> None:
    store = CodeStore(tmp_path / "code")
    code = _stored(store, [dir_member("pkg"), file_member("pkg/a.txt", b"a")])
    jobs = tmp_path / "jobs"
    store.assemble(code, _job_folder(jobs, "1"))
    assert store.spares.wait_idle(30)
    second = _job_folder(jobs, "2")
    store.assemble(code, second)
    assert store.spares.wait_idle(30)
    inode = second.stat().st_ino
    os.chmod(second / "pkg", 0o777)
    assert store.spares.recycle(second)
    assert store.spares.wait_idle(30)
    assert not (second.exists() or second.is_symlink())  # taken out of the job's folder, then dropped
    third = _job_folder(jobs, "3")
    store.assemble(code, third)
    assert third.stat().st_ino != inode
    assert stat.S_IMODE((third / "pkg").stat().st_mode) == 0o755
    assert not store.spares.recycle(jobs / "1" / "code")  # built for its job, never a spare: not taken


def test_a_collected_jobs_code_folder_serves_the_next_job_with_its_changes_undone(
    start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = start_agent(tmp_path / "work")
    client = agent.client()
    code_hash = client.upload([dir_member("pkg"), file_member("pkg/a.txt", b"pristine\n")])
    trees = agent.work_dir / "code" / "trees"

    def run(commands: list[str]) -> str:
        # Spares are made and given back in the background: wait until that is over, so which folder
        # the job gets does not depend on timing.
        wait_for(lambda: not any(p.name.startswith(".") for p in trees.iterdir()), 30, "the spare trees")
        job = client.submit(commands, code_hash=code_hash)
        state = client.wait_final(job["id"])
        assert state["status"] == "done", client.read_logs(job["id"])
        return str(job["id"])

    run(["true"])  # its folder is built from the store; a spare follows
    second = run(["echo dirty > pkg/a.txt", "touch pkg/new.txt"])  # gets the spare, and changes it
    inode = (agent.work_dir / "jobs" / second / "code").stat().st_ino
    assert client.request("DELETE", f"/api/jobs/{second}").status == 204  # collected: its folder goes back
    third = run(["cat pkg/a.txt", "ls pkg"])
    assert client.read_logs(third) == b"pristine\na.txt\n"
    assert (agent.work_dir / "jobs" / third / "code").stat().st_ino == inode  # the second job's folder
