"""Which local port each task port gets, checked and held with real sockets before submission."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dstack.cli.errors import CLIError
from dstack.cli.ports.reserve import FORCE_SERVER_ENV, Forward, is_loopback_url, reserve, same_machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def busy() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def _release(forwards: list[Forward]) -> None:
    for forward in forwards:
        forward.release()


def _connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_remote_task_holds_every_local_port_without_listening_yet() -> None:
    a, b = _free_port(), _free_port()
    forwards = reserve(
        [{"local_port": a, "container_port": 7860}, {"local_port": None, "container_port": b}],
        local_task=False,
        check_task_ports=False,
    )
    try:
        assert [(f.container_port, f.local_port, f.direct) for f in forwards] == [
            (7860, a, False),
            (b, b, False),
        ]
        assert all(f.listener is not None for f in forwards)
        assert forwards[0].url == f"http://127.0.0.1:{a}"
        # Held: nobody else can take it; not listening yet: a browser is refused until the app answers.
        with pytest.raises(OSError), socket.socket() as other:
            other.bind(("127.0.0.1", a))
        assert _connect_refused(a)
    finally:
        _release(forwards)


def test_any_free_port_moves_on_when_its_own_number_is_busy(busy: socket.socket) -> None:
    taken = busy.getsockname()[1]
    forwards = reserve(
        [{"local_port": None, "container_port": taken}], local_task=False, check_task_ports=False
    )
    try:
        assert forwards[0].local_port not in (taken, 0)
    finally:
        _release(forwards)


def test_busy_local_port_is_one_sentence_with_the_p_fix(busy: socket.socket) -> None:
    taken, earlier = busy.getsockname()[1], _free_port()
    with pytest.raises(CLIError) as refused:
        reserve(
            [{"local_port": earlier, "container_port": 8000}, {"local_port": taken, "container_port": 7860}],
            local_task=False,
            check_task_ports=False,
        )
    message = refused.value.message
    assert message.startswith(f"Local port {taken} is in use; forward task port 7860 to another one with -p ")
    assert message.endswith("or -p *:7860 for any free port")
    # What was already held is given back.
    with socket.socket() as again:
        again.bind(("127.0.0.1", earlier))


def test_same_machine_never_binds_the_task_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORCE_SERVER_ENV, raising=False)
    task, mapped, local = _free_port(), _free_port(), _free_port()
    forwards = reserve(
        [
            {"local_port": task, "container_port": task},
            {"local_port": None, "container_port": mapped},
            {"local_port": local, "container_port": 9000},
        ],
        local_task=True,
        check_task_ports=True,
    )
    try:
        assert [(f.local_port, f.listener is None, f.direct) for f in forwards] == [
            (task, True, False),  # the task itself listens there: no relay
            (mapped, True, False),
            (local, False, True),  # another local port: relayed straight to the task's port
        ]
    finally:
        _release(forwards)


def test_forcing_the_server_path_on_one_machine_avoids_the_task_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORCE_SERVER_ENV, "1")
    task, local = _free_port(), _free_port()
    forwards = reserve(
        [{"local_port": None, "container_port": task}, {"local_port": local, "container_port": 9000}],
        local_task=True,
        check_task_ports=False,
    )
    try:
        assert forwards[0].local_port != task and forwards[0].listener is not None
        assert (forwards[1].local_port, forwards[1].direct) == (local, False)
    finally:
        _release(forwards)


def test_task_port_busy_here_is_refused(busy: socket.socket) -> None:
    taken = busy.getsockname()[1]
    with pytest.raises(
        CLIError, match=rf"^Port {taken} is in use on this machine, where the task must listen"
    ):
        reserve([{"local_port": None, "container_port": taken}], local_task=True, check_task_ports=True)


def test_same_machine_needs_a_loopback_server_and_only_local_backends() -> None:
    assert is_loopback_url("http://127.0.0.1:3000")
    assert is_loopback_url("http://localhost:3000")
    assert is_loopback_url("http://[::1]:3000/")
    assert not is_loopback_url("https://dstack.example.com")
    assert not is_loopback_url("http://192.0.2.10:3000")
    assert same_machine("http://127.0.0.1:3000", ["local"])
    assert not same_machine("http://127.0.0.1:3000", ["local", "ssh"])
    assert not same_machine("http://127.0.0.1:3000", [])
    assert not same_machine("http://192.0.2.10:3000", ["local"])
