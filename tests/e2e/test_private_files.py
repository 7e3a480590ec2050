"""Everything under ~/.dstack is its owner's only (issue 13, item 6): another user of the machine can
read nothing there (checked as `nobody` with setpriv), on the client, the server and the agent's folders,
and a tree an older version left world-readable is made private on the next start."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv
from tests.e2e.test_run import task, write

pytestmark = pytest.mark.e2e

# Walks a tree as another user and prints every folder it could list and every file it could read.
OTHER_USER_PROBE = """
import os, sys
for folder, folders, files in os.walk(sys.argv[1], onerror=lambda e: None):
    print("listed", folder)
    for name in files:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                f.read(1)
            print("read", os.path.join(folder, name))
        except OSError:
            pass
"""


@pytest.fixture
def open_home() -> Iterator[DstackEnv]:
    """A HOME other users may enter, as on a usual Linux machine (pytest's own tmp folder is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="dstack-private-"))
    base.chmod(0o755)
    env = DstackEnv(base / "home")
    env.home.chmod(0o755)
    try:
        yield env
    finally:
        env.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to act as another user")
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def _other_user_sees(root: Path) -> list[str]:
    result = _as_nobody("/usr/bin/python3", "-c", OTHER_USER_PROBE, str(root))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# What a job's own processes write or read in its folder, in the user's umask like the job's code copy:
# the exit status its script records, and the MPI hostfile a container's own user reads through a mount.
# The job's folder (and one awaiting removal) is 0700, so nobody else reaches them.
_TASK_FILES = {"exit_code", "mpi_hostfile"}


def _not_private(root: Path) -> list[str]:
    """Folders and files below root that others have any permission on, but the jobs' own files."""
    found = []
    for folder, folders, files in os.walk(root):
        in_job = Path(folder).parent.name == "jobs"
        folders[:] = [n for n in folders if not (n == "code" and in_job)]
        files = [n for n in files if not (n in _TASK_FILES and in_job)]
        for name in [*folders, *files]:
            path = Path(folder) / name
            try:
                status = path.lstat()
            except FileNotFoundError:
                continue  # removed meanwhile (the agent removes deleted jobs' folders when it is quiet)
            if not stat.S_ISLNK(status.st_mode) and stat.S_IMODE(status.st_mode) & 0o077:
                found.append(f"{oct(stat.S_IMODE(status.st_mode))} {path.relative_to(root)}")
    return found


def test_nothing_under_dstack_is_readable_by_another_user(open_home: DstackEnv) -> None:
    env = open_home
    project = env.home / "project"
    write(project / "secret.env", "API_KEY=hunter2\n").chmod(0o600)
    task(project, ["cat secret.env > /dev/null; echo done"], extra="env:\n  - MODE=private\n")
    env.run("run", ".", "-y", cwd=project, check=True)
    dstack = env.home / ".dstack"
    assert (dstack / "server" / "agents" / "local" / "jobs").is_dir()  # the agent's folders are there too
    assert list((dstack / "cache").rglob("*.json")), "the config cache (with env values) exists"
    seen = _other_user_sees(dstack)
    assert seen == [], seen
    # Not only unreachable through ~/.dstack: private in themselves, so a moved or copied folder stays so.
    assert stat.S_IMODE(dstack.stat().st_mode) == 0o700
    leaks = [line for line in _not_private(dstack) if "/agents/local/code/" not in f"/{line.split()[1]}"]
    assert leaks == [], leaks
    # The user's own files in the project are untouched by all this.
    assert stat.S_IMODE((project / ".dstack.yml").stat().st_mode) & 0o044


def test_a_tree_an_older_version_left_readable_is_made_private(open_home: DstackEnv) -> None:
    env = open_home
    dstack = env.home / ".dstack"
    old = [
        write(dstack / "cache" / "configs" / "0123.json", '{"env": {"TOKEN": "t0k"}}'),
        write(dstack / "cache" / "code" / "abc.tar", "archive"),
        write(dstack / "server" / "logs" / "job.log", "output"),
    ]
    for path in [dstack, *dstack.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert [line for line in _other_user_sees(dstack) if line.startswith("read")], "the setup is readable"
    result = env.run("ps")  # any command: nothing to do with those files
    assert result.returncode == 0, result.stderr
    assert _other_user_sees(dstack) == []
    assert _not_private(dstack) == []
    for path in old:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_tasks_keep_the_users_umask_for_their_own_files(open_home: DstackEnv) -> None:
    env = open_home
    project = env.home / "project"
    task(project, ["touch made-by-task; stat -c %a made-by-task; umask"])
    result = env.run("run", ".", "-y", cwd=project, env={})
    assert result.returncode == 0, result.stderr
    mode, umask = result.stdout.split()
    assert (mode, umask) == ("644", "0022"), result.stdout  # the harness runs dstack with umask 022
