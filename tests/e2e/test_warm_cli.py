"""The warm command process (dstack.cli.warm_server): after one command, the next ones are forked from a
process that has the CLI imported. A user must not be able to tell, except by the speed: the same
output, exit codes, folder, environment, stdin and umask; Ctrl+C and Ctrl+Z act on the command; a
killed CLI takes its command with it; a changed install is used by the very next command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from dstack.agent.procutil import list_processes, read_process
from tests.e2e.harness import DSTACK, DstackEnv, Terminal, wait_for
from tests.e2e.test_run import run_name, task

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def _warm_on(dstack_env: DstackEnv) -> None:
    dstack_env.env["DSTACK_CLI_WARM"] = "1"  # opt-in for now (docs/cli.md)


def warm_processes(env: DstackEnv) -> list[int]:
    return [pid for pid in env.processes() if b"dstack.cli.warm_server" in _cmdline(pid)]


def copies_of(warm: int) -> list[int]:
    """The commands a warm process is running: its live children (each the leader of its own group)."""
    return [p.pid for p in list_processes().values() if p.ppid == warm and not p.is_zombie]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str | None:
    info = read_process(pid)
    return info.state if info is not None else None


def _gone(pid: int) -> bool:
    info = read_process(pid)
    return info is None or info.is_zombie


def started_warm(env: DstackEnv) -> int:
    """Run one command (which starts the warm process) and wait until the warm process serves."""
    (env.home / ".dstack").mkdir(parents=True, exist_ok=True)  # as for anyone who has used dstack
    env.run("ps", check=True)
    [warm] = wait_for(lambda: warm_processes(env), timeout=30, what="the warm process to start")
    wait_for(lambda: _sockets(env), timeout=30, what="its socket")
    return warm


def _sockets(env: DstackEnv) -> list[Path]:
    folder = env.home / ".dstack" / "cli"
    return list(folder.glob("warm-*.sock")) if folder.is_dir() else []


def detached_sleeper(env: DstackEnv, project: Path) -> str:
    task(project, ["echo started", "sleep 1000"])
    result = env.run("run", ".", "-y", "-d", cwd=project, check=True)
    return run_name(result.stdout)


def test_the_warm_process_is_private_and_serves_the_next_command(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    warm = started_warm(dstack_env)
    folder = dstack_env.home / ".dstack" / "cli"
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path} is open to others"
        assert path.stat().st_uid == os.getuid()
    name = detached_sleeper(dstack_env, project_dir)
    follower = dstack_env.popen("logs", "-f", name)
    try:
        # The command runs in a copy of the warm process, in a process group of its own; the process the
        # user started has nothing of its own to do but wait and forward signals.
        [copy] = wait_for(lambda: copies_of(warm), timeout=30, what="the warm copy of `dstack logs -f`")
        info = read_process(copy)
        assert info is not None and info.pgid == copy
        assert follower.stdout is not None
        assert follower.stdout.readline() == "started\n"
        assert not [p for p in list_processes().values() if p.ppid == follower.pid]
        # A CLI killed outright takes its command with it.
        follower.kill()
        follower.wait(timeout=10)
        wait_for(lambda: _gone(copy), timeout=10, what="the copy to end with its CLI")
    finally:
        follower.kill()
        follower.communicate(timeout=10)
    assert warm in warm_processes(dstack_env)  # the warm process itself goes on serving
    dstack_env.run("stop", "-x", "-y", name, check=True)


def test_a_warm_command_sees_its_own_folder_environment_stdin_and_umask(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    started_warm(dstack_env)
    task(project_dir, ["echo FOO=$FOO", "echo here=$(basename $PWD)", "umask"], extra="env:\n  - FOO\n")
    result = subprocess.run(
        [DSTACK, "run", "."],
        cwd=project_dir,
        input="y\n",  # no -y: the plan is confirmed on stdin
        env={**dstack_env.env, "FOO": "from-the-callers-environment"},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o027),  # the user's umask is what the task gets (SPEC, private files)
    )
    assert result.returncode == 0, result.stderr
    assert "FOO=from-the-callers-environment" in result.stdout
    assert "0027" in result.stdout
    declined = subprocess.run(
        [DSTACK, "run", "."],
        cwd=project_dir,
        input="n\n",
        env={**dstack_env.env, "FOO": "x"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert declined.returncode == 0, declined.stderr
    assert "Exiting..." in declined.stdout + declined.stderr and "FOO=" not in declined.stdout


def test_mistakes_read_the_same_warm_and_cold(dstack_env: DstackEnv, project_dir: Path) -> None:
    started_warm(dstack_env)
    (project_dir / "broken.dstack.yml").write_text("type: task\ncommands: [echo hi\n")
    cold = {"DSTACK_CLI_WARM": "0"}
    for args in (
        ("ps", "--no-such-flag"),
        ("logs", "no-such-run"),
        ("run", ".", "-f", "broken.dstack.yml", "-y"),
        ("stop",),
        ("--version",),
    ):
        warm_result = dstack_env.run(*args, cwd=project_dir)
        cold_result = dstack_env.run(*args, cwd=project_dir, env=cold)
        assert (warm_result.returncode, warm_result.stdout, warm_result.stderr) == (
            cold_result.returncode,
            cold_result.stdout,
            cold_result.stderr,
        ), args


def test_ctrl_c_and_ctrl_z_act_on_the_warm_command(dstack_env: DstackEnv, project_dir: Path) -> None:
    """Through the real terminal: Ctrl+C ends the command as it does cold. Ctrl+Z, then `fg`: in a
    process group of its own under this test (as a shell's job is; a session leader is never stopped)."""
    warm = started_warm(dstack_env)
    name = detached_sleeper(dstack_env, project_dir)
    job = dstack_env.popen("logs", "-f", name, process_group=0)
    try:
        [copy] = wait_for(lambda: copies_of(warm), timeout=30, what="the warm copy")
        os.kill(job.pid, signal.SIGTSTP)  # what Ctrl+Z sends the foreground job
        wait_for(lambda: _state(job.pid) == "T", timeout=10, what="the CLI to stop")
        wait_for(lambda: _state(copy) == "T", timeout=10, what="the command to stop")
        os.killpg(job.pid, signal.SIGCONT)  # what `fg` sends
        wait_for(lambda: _state(copy) not in ("T", None), timeout=10, what="it to go on")
        assert _state(job.pid) != "T"
    finally:
        job.kill()
        job.communicate(timeout=10)
    codes = []
    for warm_or_cold in ("warm", "cold"):
        if warm_or_cold == "cold":
            dstack_env.env["DSTACK_CLI_WARM"] = "0"  # (and back to 1 below)
        terminal = Terminal(dstack_env, "logs", "-f", name)
        try:
            terminal.expect("started")
            if warm_or_cold == "warm":
                [copy] = wait_for(lambda: copies_of(warm), timeout=30, what="the warm copy on the terminal")
            terminal.interrupt()
            codes.append(terminal.wait())
        finally:
            terminal.close()
        if warm_or_cold == "warm":
            wait_for(lambda: _gone(copy), timeout=10, what="the command to end")  # noqa: B023
    dstack_env.env["DSTACK_CLI_WARM"] = "1"
    assert codes[0] == codes[1]  # Ctrl+C ends `dstack logs -f` as it does cold
    dstack_env.run("stop", "-x", "-y", name, check=True)


def test_a_changed_install_is_used_by_the_very_next_command(dstack_env: DstackEnv, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(SRC / "dstack", source / "dstack", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(source)}
    (dstack_env.home / ".dstack").mkdir(parents=True, exist_ok=True)
    assert dstack_env.run("--version", env=env, check=True).stdout.startswith("dstack ")
    [warm] = wait_for(lambda: warm_processes(dstack_env), timeout=30, what="the warm process")
    wait_for(lambda: _sockets(dstack_env), timeout=30, what="its socket")
    version = source / "dstack" / "__init__.py"
    version.write_text(version.read_text().replace('__version__ = "', '__version__ = "9.9.9-'))
    assert dstack_env.run("--version", env=env, check=True).stdout.startswith("dstack 9.9.9-")
    wait_for(lambda: warm not in warm_processes(dstack_env), timeout=10, what="the stale warm process to end")
    # The command that found it stale starts a fresh one, with the new code.
    wait_for(lambda: warm_processes(dstack_env), timeout=30, what="a fresh warm process")
    assert dstack_env.run("--version", env=env, check=True).stdout.startswith("dstack 9.9.9-")


def test_without_dstack_cli_warm_1_no_warm_process_starts(dstack_env: DstackEnv) -> None:
    (dstack_env.home / ".dstack").mkdir(parents=True, exist_ok=True)
    del dstack_env.env["DSTACK_CLI_WARM"]
    for value in ({}, {"DSTACK_CLI_WARM": "0"}):
        dstack_env.run("ps", env=value)
        dstack_env.run("ps", env=value)
    assert not warm_processes(dstack_env)
    assert not (dstack_env.home / ".dstack" / "cli").exists()


def test_a_stopped_warm_process_is_passed_by_and_the_command_runs_once(dstack_env: DstackEnv) -> None:
    warm = started_warm(dstack_env)
    out = dstack_env.home / "out.txt"
    os.kill(warm, signal.SIGSTOP)
    try:
        # Pipes, as a caller's: none may stay held by the stopped process once the command has ended.
        result = subprocess.run([DSTACK, "--version"], env=dstack_env.env, capture_output=True, timeout=60)
        assert result.returncode == 0
        out.write_bytes(result.stdout)
        assert out.read_text().count("dstack ") == 1  # it ran here, cold, after the hand-over timed out
    finally:
        os.kill(warm, signal.SIGCONT)
    # Resumed, the warm process finds the abandoned command: its copy never gets the go-ahead.
    wait_for(lambda: not copies_of(warm), timeout=10, what="the abandoned copy to be gone")
    assert out.read_text().count("dstack ") == 1
    assert dstack_env.run("--version", check=True).stdout.count("dstack ") == 1  # and it serves again
