"""Code archives: safe extraction, and refusal of every archive that could write outside the code folder."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest
from agent_testkit import AgentClient, AgentProcess, dir_member, file_member, link_member, make_tar

from dstack.agent.unpack import UnpackError, check_members, unpack_code


def _submit_archive(client: AgentClient, archive: bytes) -> dict:
    job = client.submit(["ls -la"], code_hash=client.upload(archive))
    return client.wait_final(job["id"])


def test_good_archive_keeps_content_modes_mtimes_and_inside_symlinks(
    client: AgentClient, shared_agent: AgentProcess
) -> None:
    archive = make_tar(
        [
            dir_member("pkg"),
            dir_member("empty"),
            file_member("pkg/run.sh", b"#!/bin/sh\necho ran\n", mode=0o755, mtime=1_500_000_000),
            file_member("pkg/setuid", b"x", mode=0o4755),
            file_member("./data/nested/file.txt", b"nested\n"),
            link_member("pkg/link-to-nested", "../data/nested/file.txt"),
            link_member("self", "."),
        ]
    )
    job = client.submit(["./pkg/run.sh", "cat pkg/link-to-nested"], code_hash=client.upload(archive))
    state = client.wait_final(job["id"])
    assert state["status"] == "done", client.read_logs(job["id"])
    assert client.read_logs(job["id"]) == b"ran\nnested\n"
    code = shared_agent.work_dir / "jobs" / job["id"] / "code"
    assert (code / "empty").is_dir()
    run_sh = (code / "pkg" / "run.sh").stat()
    assert stat.S_IMODE(run_sh.st_mode) == 0o755
    assert run_sh.st_mtime == 1_500_000_000
    assert stat.S_IMODE((code / "pkg" / "setuid").stat().st_mode) == 0o755
    assert os.readlink(code / "pkg" / "link-to-nested") == "../data/nested/file.txt"


@pytest.mark.parametrize(
    ("members", "reason_part"),
    [
        ([file_member("../escaped", b"x")], "leads outside"),
        ([file_member("ok/../../escaped", b"x")], "leads outside"),
        ([file_member("{outside}/absolute", b"x")], "absolute path"),
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
        ([file_member("target", b"x"), link_member("hard", "{outside}/hard", hard=True)], "hard link"),
        ([file_member("same", b"x"), file_member("same", b"y")], "twice"),
    ],
)
def test_malicious_archives_are_refused_and_write_nothing(
    client: AgentClient, shared_agent: AgentProcess, tmp_path: Path, members: list, reason_part: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for info, _ in members:
        info.name = info.name.replace("{outside}", str(outside))
        info.linkname = info.linkname.replace("{outside}", str(outside))
    state = _submit_archive(client, make_tar(members))
    assert state["status"] == "failed"
    assert state["exit_code"] is None
    assert state["reason"].startswith("Could not unpack the code: ")
    assert reason_part in state["reason"]
    assert list(outside.iterdir()) == []
    job_dir = shared_agent.work_dir / "jobs" / state["id"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["code", "spec.json", "state.json"]
    assert list((job_dir / "code").iterdir()) == []


def test_devices_and_fifos_are_refused() -> None:
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        info = tarfile.TarInfo("special")
        info.type = kind
        with pytest.raises(UnpackError, match="special file"):
            check_members([info])


def test_symlink_loops_are_refused() -> None:
    members = [link_member("a", "b/x")[0], link_member("b", "a/y")[0]]
    with pytest.raises(UnpackError, match="points outside"):
        check_members(members)


def test_not_a_tar_file(tmp_path: Path) -> None:
    archive = tmp_path / "junk.tar"
    archive.write_bytes(b"this is not a tar archive" * 100)
    (tmp_path / "out").mkdir()
    with pytest.raises(UnpackError, match="not a valid tar file"):
        unpack_code(archive, tmp_path / "out")


def test_read_only_folders_are_filled_before_their_mode_is_set(tmp_path: Path) -> None:
    archive = tmp_path / "code.tar"
    archive.write_bytes(make_tar([dir_member("ro", mode=0o555), file_member("ro/file", b"content")]))
    (tmp_path / "out").mkdir()
    unpack_code(archive, tmp_path / "out")
    assert (tmp_path / "out" / "ro" / "file").read_bytes() == b"content"
    assert stat.S_IMODE((tmp_path / "out" / "ro").stat().st_mode) == 0o555
