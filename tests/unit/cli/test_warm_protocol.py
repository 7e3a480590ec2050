"""The CLI-to-warm-process hand-over over a real Unix socket pair: what the warm copy receives is exactly
what the CLI had; anything else is declined."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from dstack.cli import warm_client, warm_server


def test_the_socket_path_follows_home_and_the_interpreters_shaping_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    first = warm_client.socket_path()
    assert first is not None and first.startswith(f"{tmp_path}/.dstack/cli/warm-")
    assert warm_client.socket_path() == first
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")  # another interpreter setup: another warm process
    assert warm_client.socket_path() not in (None, first)
    monkeypatch.setenv("SOME_TOKEN", "x")  # any other variable travels with the command instead
    monkeypatch.delenv("PYTHONPATH")
    assert warm_client.socket_path() == first
    monkeypatch.setenv("HOME", "/" + "h" * 120)  # too long for a Unix socket: commands run cold
    assert warm_client.socket_path() is None


def test_warm_commands_are_opt_in_and_the_server_never_forks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSTACK_CLI_WARM", raising=False)
    assert not warm_client.enabled(["dstack", "ps"])
    monkeypatch.setenv("DSTACK_CLI_WARM", "1")
    assert warm_client.enabled(["dstack", "ps"])
    assert not warm_client.enabled(["dstack", "server"])
    monkeypatch.setenv("DSTACK_CLI_WARM", "0")
    assert not warm_client.enabled(["dstack", "ps"])


def test_the_command_arrives_whole_with_its_descriptors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ODD_VALUE", "a=b c\u00e9")
    argv = ["dstack", "run", ".", "-e", "X=1 2", "--", "tail \u00e9"]
    cli, warm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    received: dict[str, object] = {}

    def serve() -> None:
        received["request"] = warm_server._receive_request(warm)
        warm_server._send(warm, b"A", 0)  # accepted: only now do the descriptors travel
        received["fds"] = warm_server._receive_descriptors(warm)
        warm_server._send(warm, b"P", 4242)

    thread = threading.Thread(target=serve)
    thread.start()
    previous = os.umask(0o027)
    try:
        assert warm_client._hand_over(cli, argv) == 4242
    finally:
        os.umask(previous)
        thread.join(timeout=10)
    request = received["request"]
    fds = received["fds"]
    assert isinstance(request, warm_server.Request) and isinstance(fds, list)
    try:
        assert request.argv == argv
        assert request.env == dict(os.environ)
        assert request.umask == 0o027
        assert len(fds) == 4
        assert os.readlink(f"/proc/self/fd/{fds[3]}") == str(tmp_path)  # the working folder
        for fd, mine in zip(fds[:3], (0, 1, 2), strict=True):
            assert os.fstat(fd).st_ino == os.fstat(mine).st_ino
    finally:
        warm_server._close(fds)
        cli.close()
        warm.close()


def test_a_request_of_another_protocol_is_declined() -> None:
    cli, warm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        payload = b"\0".join([b"something-else", b"22", b"1", b"dstack"])
        cli.sendall(len(payload).to_bytes(8, "little") + payload)
        assert warm_server._receive_request(warm) is None
        cli.sendall((warm_server.MAX_REQUEST + 1).to_bytes(8, "little"))
        assert warm_server._receive_request(warm) is None
    finally:
        cli.close()
        warm.close()


def test_a_declining_warm_process_leaves_the_command_to_run_here() -> None:
    cli, warm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def decline() -> None:
        warm_server._receive_request(warm)
        warm_server._send(warm, b"R", 0)  # no descriptor is sent to a process that declines

    thread = threading.Thread(target=decline)
    thread.start()
    try:
        assert warm_client._hand_over(cli, ["dstack", "ps"]) is None
    finally:
        thread.join(timeout=10)
        cli.close()
        warm.close()
