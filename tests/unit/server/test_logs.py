"""The server's copy of a job's output (services/logs.py): shared with the agent's own file where both are on
this disk, copied otherwise, and never read past the run output limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dstack.agent.logstore import create_log, output_path
from dstack.server.services import logs
from dstack.server.settings import ServerSettings


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    settings = ServerSettings(server_dir=tmp_path / "server")
    settings.logs_dir.mkdir(parents=True)
    return settings


def _agent_file(tmp_path: Path, job_id: str) -> Path:
    """An agent's output.log as the agent makes it (umask 077, as the agent runs)."""
    path = output_path(tmp_path / "agent", job_id)
    path.parent.mkdir(parents=True)
    old = os.umask(0o077)
    try:
        create_log(path.parent)
    finally:
        os.umask(old)
    return path


def _task_prints(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_the_servers_copy_is_the_agents_own_file_and_outlives_its_folder(
    settings: ServerSettings, tmp_path: Path
) -> None:
    source = _agent_file(tmp_path, "job")
    appender = logs.LogAppender(settings, "job", source)
    assert appender.shared
    _task_prints(source, b"hello\n")
    appender.grew(6)  # the supervisor counts what the agent published; nothing is written twice
    own = logs.log_path(settings, "job")
    assert own.read_bytes() == b"hello\n"
    assert os.path.samefile(own, source)
    assert own.stat().st_mode & 0o777 == 0o600
    source.unlink()  # the agent deletes the job's folder once the run is recorded
    assert logs.LogReader(settings, "job").read(0) == b"hello\n"
    appender.close()


def test_a_restarted_server_finds_its_shared_file_and_an_old_copy_stays_a_copy(
    settings: ServerSettings, tmp_path: Path
) -> None:
    source = _agent_file(tmp_path, "job")
    _task_prints(source, b"abc")
    logs.LogAppender(settings, "job", source).close()
    again = logs.LogAppender(settings, "job", source)
    assert again.shared and again.size == 3
    again.close()

    other = _agent_file(tmp_path, "other")
    copy = logs.LogAppender(settings, "other")  # a server that copied before (an older one)
    copy.append(b"xyz")
    copy.close()
    resumed = logs.LogAppender(settings, "other", other)
    assert not resumed.shared and resumed.size == 3
    resumed.close()


@pytest.mark.parametrize("kind", ["symlink", "readable by others", "linked elsewhere", "missing"])
def test_a_source_that_is_not_only_the_agents_private_file_is_copied_instead(
    settings: ServerSettings, tmp_path: Path, kind: str
) -> None:
    source = _agent_file(tmp_path, "job")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not the task's output")
    secret.chmod(0o600)
    if kind == "symlink":
        source.unlink()
        source.symlink_to(secret)
    elif kind == "readable by others":
        source.chmod(0o644)
    elif kind == "linked elsewhere":
        source.unlink()
        os.link(secret, source)
    else:
        source.unlink()
    appender = logs.LogAppender(settings, "job", source)
    assert not appender.shared
    own = logs.log_path(settings, "job")
    assert own.read_bytes() == b""
    assert not own.is_symlink() and own.stat().st_nlink == 1
    appender.append(b"copied\n")
    assert own.read_bytes() == b"copied\n"
    assert secret.read_bytes() == b"not the task's output"
    appender.close()


def test_unshare_keeps_exactly_what_was_counted_and_nothing_the_agent_writes_later(
    settings: ServerSettings, tmp_path: Path
) -> None:
    source = _agent_file(tmp_path, "job")
    appender = logs.LogAppender(settings, "job", source)
    _task_prints(source, b"0123456789" * 100)
    appender.grew(1000)
    appender.unshare(keep=640)  # over its quota of 640 bytes
    own = logs.log_path(settings, "job")
    assert not appender.shared and appender.size == 640
    _task_prints(source, b"more after the quota")
    assert own.read_bytes() == (b"0123456789" * 100)[:640]
    assert not os.path.samefile(own, source)
    assert own.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in settings.logs_dir.iterdir()] == ["job.log"]  # no spare file left behind
    appender.close()


def test_readers_never_read_past_the_run_output_limit(settings: ServerSettings, tmp_path: Path) -> None:
    source = _agent_file(tmp_path, "job")
    appender = logs.LogAppender(settings, "job", source)
    _task_prints(source, b"line\n" * 100)  # printed past the limit of 203 bytes, not cut yet
    reader = logs.LogReader(settings, "job", bound=203)
    assert reader.read(0) == (b"line\n" * 100)[:203]
    assert reader.read(200) == b"lin"
    assert reader.read(203) == b""
    reader.close()
    assert logs.size(settings, "job", 203) == 203
    assert logs.size(settings, "job") == 500
    path = logs.log_path(settings, "job")
    assert logs.tail_offset(path, 2, bound=203) == 195  # the last two lines of what may be shown
    appender.close()
