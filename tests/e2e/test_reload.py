"""`dstack run --reload` and `dstack attach --reload` end to end: a real CLI, server, agent and task.

The tasks serve their own copy of the code over HTTP on 127.0.0.1 (the local backend runs them on this
machine), so every check reads what the task really has.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for

pytestmark = pytest.mark.e2e

SYNC_TIMEOUT = 30.0  # generous: the machine is shared; the benchmark measures the real latency
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body) from the task, or None while nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        conn.close()


def wait_served(port: int, path: str, expected: tuple[int, bytes | None], what: str) -> None:
    def served() -> bool:
        answer = get(port, path)
        if answer is None:
            return False
        return answer[0] == expected[0] and (expected[1] is None or answer[1] == expected[1])

    wait_for(served, timeout=SYNC_TIMEOUT, what=what, interval=0.1)


def write_config(project: Path, commands: list[str]) -> None:
    lines = "".join(f"  - {command}\n" for command in commands)
    (project / ".dstack.yml").write_text(f"type: task\ncommands:\n{lines}")


def start(env: DstackEnv, project: Path, *args: str) -> subprocess.Popen[str]:
    """A CLI attached to the run, its output in files (a full pipe would stall it)."""
    out = (env.home / "cli.out").open("a")
    err = (env.home / "cli.err").open("a")
    return env.popen(*args, cwd=project, stdout=out, stderr=err)


def cli_stderr(env: DstackEnv) -> str:
    path = env.home / "cli.err"
    return path.read_text() if path.exists() else ""


def batches_applied(env: DstackEnv) -> list[str]:
    log = env.home / ".dstack" / "server" / "agents" / "local" / "agent.log"
    return [line for line in log.read_text().splitlines() if "reload batch applied" in line]


def task_code(env: DstackEnv) -> Path:
    """The running task's copy of the code (the local backend keeps it under the agent's folder)."""
    jobs = env.home / ".dstack" / "server" / "agents" / "local" / "jobs"
    found = wait_for(lambda: list(jobs.glob("*/code")), timeout=START_TIMEOUT, what="the task's code")
    assert len(found) == 1, found
    return found[0]


def stop_cli(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def git(project: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=project,
        check=True,
        capture_output=True,
    )


def test_edits_new_files_deletions_and_folders_reach_the_task(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    port = free_port()
    write_config(project_dir, [f"python3 -m http.server {port} --bind 127.0.0.1"])
    (project_dir / "index.html").write_text("v1")
    (project_dir / "old.txt").write_text("old")
    (project_dir / ".gitignore").write_text("secret.txt\nbuild/\n")
    (project_dir / ".dstackignore").write_text("*.bin\n")
    git(project_dir, "init", "-q")
    cli = start(dstack_env, project_dir, "run", ".", "-y", "--reload")
    try:
        wait_for(lambda: get(port, "/index.html") == (200, b"v1"), timeout=START_TIMEOUT, what="the task")

        (project_dir / "index.html").write_text("v2")
        wait_served(port, "/index.html", (200, b"v2"), "the edit")
        wait_for(lambda: batches_applied(dstack_env), timeout=10, what="the agent's log line")
        applied = [line.split("applied: ")[-1] for line in batches_applied(dstack_env)]
        assert applied == ["1 put, 0 deleted, 0 failed"]  # only the changed file travelled
        (project_dir / "new.txt").write_text("brand new")
        wait_served(port, "/new.txt", (200, b"brand new"), "the new file")
        blob = os.urandom(12 * 1024**2)
        (project_dir / "blob.data").write_bytes(blob)
        wait_served(port, "/blob.data", (200, blob), "a 12 MB file")
        (project_dir / "old.txt").unlink()
        wait_served(port, "/old.txt", (404, None), "the deletion")

        docs = project_dir / "docs"
        (docs / "deep").mkdir(parents=True)
        (docs / "deep" / "page.txt").write_text("page")
        wait_served(port, "/docs/deep/page.txt", (200, b"page"), "the new folder")
        docs.rename(project_dir / "manual")
        wait_served(port, "/manual/deep/page.txt", (200, b"page"), "the renamed folder")
        wait_served(port, "/docs/deep/page.txt", (404, None), "the folder's old name to go")
        (project_dir / "manual" / "deep" / "page.txt").rename(project_dir / "page.txt")
        wait_served(port, "/page.txt", (200, b"page"), "the moved file")
        subprocess.run(["rm", "-rf", str(project_dir / "manual")], check=True)
        wait_served(port, "/manual/", (404, None), "the deleted folder")

        # Ignored paths never travel, nor does .git; a file over the size limit is one warning.
        (project_dir / "secret.txt").write_text("secret")
        (project_dir / "build").mkdir()
        (project_dir / "build" / "out.o").write_text("object")
        (project_dir / "data.bin").write_text("binary")
        git(project_dir, "add", "-A")
        git(project_dir, "commit", "-q", "-m", "x")
        with (project_dir / "huge.dat").open("wb") as f:
            f.truncate(65 * 1024**2)  # sparse: over the 64 MB limit for one file without using the disk
        (project_dir / "index.html").write_text("v3")  # a marker: everything before it has been looked at
        wait_served(port, "/index.html", (200, b"v3"), "the marker edit")
        for path in ("/secret.txt", "/build/out.o", "/data.bin", "/.git/HEAD", "/huge.dat"):
            answer = get(port, path)
            assert answer is not None and answer[0] == 404, path
        errors = cli_stderr(dstack_env)
        assert errors.count("reload: huge.dat is 65 MB, over the 64 MB limit for one file") == 1, errors
        assert "Traceback" not in errors

        # Un-ignoring a file sends it.
        (project_dir / ".gitignore").write_text("build/\n")
        wait_served(port, "/secret.txt", (200, b"secret"), "the file no longer ignored")
        assert cli.poll() is None
    finally:
        stop_cli(cli)


def test_an_app_reloads_itself_with_the_edited_handler(dstack_env: DstackEnv, project_dir: Path) -> None:
    port = free_port()
    app = textwrap.dedent(
        """
        from fastapi import FastAPI

        app = FastAPI()


        @app.get("/")
        def hello() -> dict:
            return {"message": "MESSAGE"}
        """
    )
    (project_dir / "app.py").write_text(app.replace("MESSAGE", "hello v1"))
    # The task gets its own venv (without FastAPI, and tests install nothing from the network), so the app
    # runs on the interpreter of dstack's own venv, which has FastAPI and uvicorn.
    write_config(
        project_dir, [f"{sys.executable} -m uvicorn app:app --reload --host 127.0.0.1 --port {port}"]
    )
    cli = start(dstack_env, project_dir, "run", ".", "-y", "--reload")
    try:
        wait_for(
            lambda: get(port, "/") == (200, b'{"message":"hello v1"}'), timeout=START_TIMEOUT, what="the app"
        )
        # uvicorn's reloader starts watching (WatchFiles) as its worker starts, and on a loaded machine the
        # worker may answer first: an edit in between is lost by uvicorn, not by dstack (an edit at any
        # moment reaching the task is test_reload_timing's). A user edits a while after the app is up.
        time.sleep(2.0)
        (project_dir / "app.py").write_text(app.replace("MESSAGE", "hello v2"))
        wait_served(port, "/", (200, b'{"message":"hello v2"}'), "the app to reload with the new handler")
        assert cli.poll() is None
    finally:
        stop_cli(cli)


def test_a_git_checkout_of_a_thousand_files_travels_as_one_batch(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    port = free_port()
    write_config(project_dir, [f"python3 -m http.server {port} --bind 127.0.0.1"])
    files = project_dir / "files"
    files.mkdir()
    for i in range(1000):
        (files / f"f{i:04}.txt").write_text("main")
    git(project_dir, "init", "-q", "-b", "main")
    git(project_dir, "add", "-A")
    git(project_dir, "commit", "-q", "-m", "main")
    git(project_dir, "checkout", "-q", "-b", "other")
    for i in range(1000):
        (files / f"f{i:04}.txt").write_text("other")
    git(project_dir, "commit", "-q", "-am", "other")
    git(project_dir, "checkout", "-q", "main")
    cli = start(dstack_env, project_dir, "run", ".", "-y", "--reload")
    try:
        wait_for(
            lambda: get(port, "/files/f0999.txt") == (200, b"main"), timeout=START_TIMEOUT, what="the task"
        )
        before = len(batches_applied(dstack_env))
        git(project_dir, "checkout", "-q", "other")
        wait_served(port, "/files/f0999.txt", (200, b"other"), "the checkout")
        copy = task_code(dstack_env) / "files"
        wait_for(
            lambda: all((copy / f"f{i:04}.txt").read_bytes() == b"other" for i in range(1000)),
            timeout=SYNC_TIMEOUT,
            what="all 1,000 files in the task's copy",
        )
        wait_for(lambda: len(batches_applied(dstack_env)) > before, timeout=10, what="the agent's log line")
        new = batches_applied(dstack_env)[before:]
        assert len(new) == 1, new
        assert "1000 put, 0 deleted, 0 failed" in new[0]
    finally:
        stop_cli(cli)


def test_attach_reload_sends_what_differs_and_outlives_a_server_restart(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    port = free_port()
    write_config(project_dir, [f"python3 -m http.server {port} --bind 127.0.0.1"])
    for name in ("a.txt", "b.txt", "c.txt"):
        (project_dir / name).write_text(name)
    submitted = dstack_env.run("run", ".", "-y", "-d", cwd=project_dir, check=True)
    name = submitted.stdout.strip().splitlines()[-1]
    wait_for(lambda: get(port, "/a.txt") == (200, b"a.txt"), timeout=START_TIMEOUT, what="the task")

    # Edited while no CLI watched: attach --reload sends it, and only it.
    (project_dir / "b.txt").write_text("edited while detached")
    elsewhere = dstack_env.home / "elsewhere"
    elsewhere.mkdir()
    wrong = dstack_env.run("attach", name, "--reload", cwd=elsewhere)
    assert wrong.returncode != 0
    assert "run dstack attach --reload in that folder" in wrong.stderr and "Traceback" not in wrong.stderr
    cli = start(dstack_env, project_dir, "attach", name, "--reload")
    try:
        wait_served(port, "/b.txt", (200, b"edited while detached"), "the edit made while detached")
        wait_for(lambda: batches_applied(dstack_env), timeout=10, what="the agent's log line")
        applied = [line.split("applied: ")[-1] for line in batches_applied(dstack_env)]
        assert applied == ["1 put, 0 deleted, 0 failed"]

        # The server goes away; edits made meanwhile arrive once it is back.
        server = dstack_env.server_pid()
        assert server is not None
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{server}").exists(), timeout=10, what="the server to die")
        (project_dir / "c.txt").write_text("edited while the server was down")
        (project_dir / "d.txt").write_text("created while the server was down")
        dstack_env.run("ps", cwd=project_dir, check=True)  # restarts the embedded server
        wait_served(port, "/c.txt", (200, b"edited while the server was down"), "the edit after the restart")
        wait_served(port, "/d.txt", (200, b"created while the server was down"), "the new file")
        (project_dir / "a.txt").write_text("and later edits still travel")
        wait_served(port, "/a.txt", (200, b"and later edits still travel"), "a later edit")
        assert cli.poll() is None
        assert "Traceback" not in cli_stderr(dstack_env)
    finally:
        stop_cli(cli)
        dstack_env.run("stop", name, "-y", "-x")


def test_reload_usage_errors_are_one_sentence(dstack_env: DstackEnv, project_dir: Path) -> None:
    write_config(project_dir, ["echo done"])
    result = dstack_env.run("run", ".", "-y", "-d", "--reload", cwd=project_dir)
    assert result.returncode != 0
    assert "drop -d" in result.stderr and "Traceback" not in result.stderr
    done = dstack_env.run("run", ".", "-y", "-n", "quick-one", cwd=project_dir)
    assert done.returncode == 0, done.stderr
    result = dstack_env.run("attach", "quick-one", "--reload", cwd=project_dir)
    assert result.returncode != 0
    assert "there is no task to send edits to" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
