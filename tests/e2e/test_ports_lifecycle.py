"""Ports around a run's life: the check before submission, the shortcut on one machine, a server restart
while attached, and `dstack attach` to a run submitted with -d."""

from __future__ import annotations

import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.portkit import Attached, free_port, write_project

pytestmark = pytest.mark.e2e


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _answers(url: str) -> bool:
    try:
        return _get(url, timeout=5) == b"hello from the task\n"
    except OSError:
        return False


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _one_sentence(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def test_busy_local_port_is_refused_before_submission(dstack_env: DstackEnv, project_dir: Path) -> None:
    port, local = free_port(), free_port()
    write_project(project_dir, [port], f"--http {port}")
    with _listen(local):
        result = dstack_env.run("run", ".", "-y", "-p", f"{local}:{port}", cwd=project_dir)
    assert result.returncode == 1
    line = _one_sentence(result.stderr)
    assert line.startswith(f"Local port {local} is in use; forward task port {port} to another one with -p ")
    assert line.endswith(f"or -p *:{port} for any free port")
    # The suggested mapping is one that works now.
    suggested = int(re.search(rf"-p (\d+):{port},", line).group(1))  # type: ignore[union-attr]
    with _listen(suggested):
        pass
    # Nothing was submitted.
    assert "local" not in dstack_env.run("ps", "-a", check=True).stdout


def test_task_port_held_by_another_program_here_is_refused(dstack_env: DstackEnv, project_dir: Path) -> None:
    port = free_port()
    write_project(project_dir, [port], f"--http {port}")
    with _listen(port):
        attached = dstack_env.run("run", ".", "-y", cwd=project_dir)
        detached = dstack_env.run("run", ".", "-y", "-d", cwd=project_dir)
    for result in (attached, detached):
        assert result.returncode == 1
        assert _one_sentence(result.stderr) == (
            f"Port {port} is in use on this machine, where the task must listen on it; "
            "stop the program that holds it, then run again"
        )
    assert "local" not in dstack_env.run("ps", "-a", check=True).stdout


def test_second_task_on_the_same_port_waits_and_the_plan_says_so(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    port = free_port()
    write_project(project_dir, [port], f"--http {port}")
    first = (
        dstack_env.run("run", ".", "-y", "-d", cwd=project_dir, check=True).stdout.strip().splitlines()[-1]
    )
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/hello"), timeout=60, what="the first task's app")
    second = Attached(dstack_env, "run", ".", "-y", "--retry-limit", "10m", cwd=project_dir)
    try:
        second.wait_for(rf"busy: port {port} on this machine is held by run {first}")
        second.wait_for("Waiting for capacity")
        _get(f"http://127.0.0.1:{port}/quit")  # the first task ends and frees its port
        assert second.url_for(port) == f"http://127.0.0.1:{port}"
        _get(f"http://127.0.0.1:{port}/quit")
        assert second.wait() == 0
    finally:
        second.stop()
    assert f"{first}" in dstack_env.run("ps", "-a", check=True).stdout


def test_same_machine_shortcut_binds_no_task_port_twice(dstack_env: DstackEnv, project_dir: Path) -> None:
    """Local backend, loopback server: port N is the task's own (no relay); L:M relays straight to M."""
    direct, mapped, local = free_port(), free_port(), free_port()
    write_project(project_dir, [direct, f"{local}:{mapped}"], f"--http {direct} --tcp {mapped}")
    run = Attached(dstack_env, "run", ".", "-y", cwd=project_dir)
    try:
        # Had the CLI bound `direct`, the app could not have listened on it.
        assert run.url_for(direct) == f"http://127.0.0.1:{direct}"
        assert _get(f"http://127.0.0.1:{direct}/hello") == b"hello from the task\n"
        assert run.url_for(mapped) == f"http://127.0.0.1:{local}"
        with socket.create_connection(("127.0.0.1", local), timeout=30) as sock:
            sock.sendall(b"echo me\n")
            assert sock.recv(100) == b"echo me\n"
        _get(f"http://127.0.0.1:{direct}/quit")
        assert run.wait() == 0
    finally:
        run.stop()


def test_server_restart_while_attached(dstack_env: DstackEnv, project_dir: Path) -> None:
    """The output resumes where it stopped (no tick lost or repeated), and the forward works again."""
    dstack_env.env["DSTACK_PORTS_VIA_SERVER"] = "1"
    port = free_port()
    write_project(project_dir, [f"*:{port}"], f"--http {port} --ticks")
    run = Attached(dstack_env, "run", ".", "-y", cwd=project_dir)
    try:
        url = run.url_for(port)
        assert _answers(f"{url}/hello")
        run.wait_for(r"^tick 20$", stream="stdout")
        server = dstack_env.server_pid()
        assert server is not None
        os.kill(server, signal.SIGKILL)
        run.wait_for("reconnecting", timeout=30)
        # The forward goes through the server: with the server down, a request through it fails.
        assert not _answers(f"{url}/hello")
        dstack_env.run("ps", check=True)  # restarts the embedded server, same port and token
        wait_for(lambda: _answers(f"{url}/hello"), timeout=60, what="the forward to work again")
        ticks_before = len(run.stdout)
        run.wait_for(rf"^tick {ticks_before + 20}$", stream="stdout", timeout=60)
        _get(f"{url}/quit")
        assert run.wait(timeout=60) == 0
    finally:
        run.stop()
    ticks = [line for line in run.stdout if line.startswith("tick ")]
    assert ticks == [f"tick {n}" for n in range(len(ticks))]
    assert run.stdout[0] == "listening"


def test_silent_link_is_noticed_and_the_cli_carries_on(dstack_env: DstackEnv, project_dir: Path) -> None:
    """A server that stops answering without closing anything (what a lost network looks like): the CLI
    notices (the heartbeats stop) and says so, keeps trying, and carries on when the server answers."""
    dstack_env.env["DSTACK_PORTS_VIA_SERVER"] = "1"
    port = free_port()
    write_project(project_dir, [f"*:{port}"], f"--http {port} --ticks")
    run = Attached(dstack_env, "run", ".", "-y", cwd=project_dir)
    try:
        url = run.url_for(port)
        run.wait_for(r"^tick 10$", stream="stdout")
        server = dstack_env.server_pid()
        assert server is not None
        os.kill(server, signal.SIGSTOP)
        try:
            run.wait_for("the link to it is lost; reconnecting", timeout=40)
        finally:
            os.kill(server, signal.SIGCONT)
        ticks_before = len(run.stdout)
        run.wait_for(rf"^tick {ticks_before + 20}$", stream="stdout", timeout=60)
        wait_for(lambda: _answers(f"{url}/hello"), timeout=60, what="the forward to answer again")
        _get(f"{url}/quit")
        assert run.wait(timeout=60) == 0
    finally:
        run.stop()
    ticks = [line for line in run.stdout if line.startswith("tick ")]
    assert ticks == [f"tick {n}" for n in range(len(ticks))]


def test_attach_to_a_detached_run_waits_for_a_slow_app(dstack_env: DstackEnv, project_dir: Path) -> None:
    """The app takes over a minute to listen (as a pip install would): the forward waits, then works."""
    dstack_env.env["DSTACK_PORTS_VIA_SERVER"] = "1"
    port, local = free_port(), free_port()
    write_project(project_dir, [port], f"--http {port} --delay 65")
    submitted = dstack_env.run("run", ".", "-y", "-d", cwd=project_dir, check=True)
    name = submitted.stdout.strip().splitlines()[-1]
    bad = dstack_env.run("attach", name, "-p", f"{local}:{port + 1}")
    assert bad.returncode == 1
    assert _one_sentence(bad.stderr).startswith(
        f"Run {name} does not declare port {port + 1} (its ports: {port})"
    )
    run = Attached(dstack_env, "attach", name, "-p", f"{local}:{port}")
    try:
        assert run.url_for(port, timeout=180) == f"http://127.0.0.1:{local}"
        assert _get(f"http://127.0.0.1:{local}/hello") == b"hello from the task\n"
        run.wait_for("^listening$", stream="stdout")  # the output from the start
        run.process.send_signal(signal.SIGINT)  # stdin is no terminal: stops the run without asking
        assert run.wait(timeout=60) == 1
        assert "Stopped" in run.stderr
    finally:
        run.stop()
    assert "terminated" in dstack_env.run("ps", "-a", check=True).stdout
