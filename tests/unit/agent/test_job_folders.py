"""How the agent lays out and removes job folders: removal waits for a quiet moment, never for ever."""

from __future__ import annotations

import array
import fcntl
import os
import time
from pathlib import Path

import pytest

from dstack.agent import fsutil
from dstack.agent.jobs import registry


def _folder_with_files(root: Path, name: str) -> Path:
    folder = root / name
    (folder / "code").mkdir(parents=True)
    for file in ("spec.json", "state.json", "output.log", "code/a.py"):
        (folder / file).write_text("x")
    return folder


def test_removal_waits_until_nothing_happened_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_SWEEP_QUIET_SECONDS", 0.3)
    sweeper = registry._Sweeper()
    first = _folder_with_files(tmp_path, "~deleted-1")
    sweeper.add(first)
    # A burst goes on: each event puts the removal off.
    for _ in range(4):
        time.sleep(0.1)
        sweeper.touch()
        assert first.exists()
    deadline = time.monotonic() + 10
    while first.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not first.exists()


def test_a_steady_load_cannot_put_removal_off_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_SWEEP_QUIET_SECONDS", 5.0)
    monkeypatch.setattr(registry, "_SWEEP_EVERY_SECONDS", 0.3)
    sweeper = registry._Sweeper()
    folder = _folder_with_files(tmp_path, "~deleted-1")
    sweeper.add(folder)
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        sweeper.touch()  # never quiet
        time.sleep(0.05)
    assert not folder.exists()


def test_a_backlog_is_removed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_SWEEP_QUIET_SECONDS", 60.0)
    monkeypatch.setattr(registry, "_SWEEP_BACKLOG", 3)
    sweeper = registry._Sweeper()
    folders = [_folder_with_files(tmp_path, f"~deleted-{i}") for i in range(3)]
    for folder in folders[:2]:
        sweeper.add(folder)
    assert all(folder.exists() for folder in folders)
    sweeper.add(folders[2])  # the third reaches the backlog: removed before add returns
    assert not any(folder.exists() for folder in folders)


def test_closing_removes_what_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_SWEEP_QUIET_SECONDS", 60.0)
    sweeper = registry._Sweeper()
    folder = _folder_with_files(tmp_path, "~deleted-1")
    sweeper.add(folder)
    sweeper.close()
    assert not folder.exists()


def _flags(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, fsutil._FS_IOC_GETFLAGS, flags)
        return flags[0]
    except OSError:
        return None  # a file system without inode flags (tmpfs): nothing to check
    finally:
        os.close(fd)


def test_job_folders_are_spread_over_the_file_system(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    registry.JobRegistry(jobs)
    before = _flags(jobs)
    if before is None:
        pytest.skip("this file system has no inode flags")
    assert before & fsutil._FS_TOPDIR_FL
    fsutil.spread_subfolders(jobs)  # again: nothing changes, nothing fails
    assert _flags(jobs) == before
    fsutil.spread_subfolders(tmp_path / "missing")  # not there: nothing to do


@pytest.fixture
def never_quiet_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A jobs folder whose agents never see a quiet moment: folders go only when asked to."""
    monkeypatch.setattr(registry, "_SWEEP_QUIET_SECONDS", 60.0)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    return jobs


def test_an_earlier_agents_leftovers_do_not_hold_up_the_next_start(never_quiet_jobs: Path) -> None:
    jobs = never_quiet_jobs
    leftover = _folder_with_files(jobs, "~deleted-left-by-a-hand-over")
    waiting = registry.JobRegistry(jobs, defer_removal=True)
    assert waiting.load() == []
    assert leftover.exists()  # removed in a quiet moment, not before the agent serves
    waiting.close()
    assert not leftover.exists()


def test_a_hand_over_leaves_the_waiting_folders_to_the_next_agent(never_quiet_jobs: Path) -> None:
    jobs = never_quiet_jobs
    first = registry.JobRegistry(jobs, defer_removal=True)
    first.load()
    leftover = _folder_with_files(jobs, "~deleted-1")
    assert first._sweeper is not None
    first._sweeper.add(leftover)
    time.sleep(0.1)  # its sweeper thread waits for a quiet moment now
    first.close(sweep=False)
    time.sleep(0.3)  # and has had the time to act on the close
    assert leftover.exists()
    registry.JobRegistry(jobs).load()  # an agent that removes at once (a one-job agent)
    assert not leftover.exists()
