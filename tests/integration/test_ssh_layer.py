"""The server's SSH layer against real sshd hosts: commands, uploads, forwards, reconnects and every refusal
a user can meet, each as one sentence."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dstack.server.ssh import SSHError, SSHErrorKind, SSHPool, SSHTarget
from tests.infra.sshhosts import ClientKey, SSHHost, make_key


def _target(host: SSHHost, key: ClientKey, user: str = "root", **kw: object) -> SSHTarget:
    return SSHTarget(host.address, port=host.port, user=user, identity_file=str(key.path), **kw)  # type: ignore[arg-type]


@pytest.fixture
def pool(tmp_path: Path) -> SSHPool:
    return SSHPool(tmp_path / "server" / "ssh")


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _http_get(socket_path: Path, path: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_commands_run_on_the_host_with_arguments_quoted(
    pool: SSHPool, ssh_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    async def scenario() -> None:
        for host, user in ((ssh_hosts[0], "root"), (ssh_hosts[1], "ubuntu")):
            connection = pool.connection(_target(host, client_key, user))
            await connection.open(pin=True)
            result = await connection.run(
                ["sh", "-c", 'hostname; id -un; printf "%s\\n" "$1"', "sh", "$(echo hi); `id`"]
            )
            assert result.returncode == 0, result.error_text
            assert result.text.splitlines() == [host.hostname, user, "$(echo hi); `id`"]
            failed = await connection.run(["sh", "-c", "exit 7"])
            assert failed.returncode == 7
        await pool.close()

    run(scenario())


def test_upload_is_private_and_atomic(
    pool: SSHPool, ssh_hosts: list[SSHHost], client_key: ClientKey, tmp_path: Path
) -> None:
    source = tmp_path / "blob"
    source.write_bytes(bytes(range(256)) * 40_000)

    async def scenario() -> None:
        connection = pool.connection(_target(ssh_hosts[0], client_key))
        await connection.open(pin=True)
        await connection.upload(source, ".dstack-test/up/blob")
        result = await connection.run(
            ["sh", "-c", "stat -c '%a %s' .dstack-test/up/blob; sha256sum < .dstack-test/up/blob"]
        )
        mode_size, digest = result.text.splitlines()
        assert mode_size == f"600 {source.stat().st_size}"
        import hashlib

        assert digest.split()[0] == hashlib.sha256(source.read_bytes()).hexdigest()
        await connection.run(["rm", "-rf", ".dstack-test"])
        await pool.close()

    run(scenario())
    # The host's home is its own: nothing of the upload is on this machine's disk.
    assert not Path("/root/.dstack-test").exists()


def test_forward_reaches_the_hosts_loopback_and_survives_a_reconnect(
    pool: SSHPool, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey
) -> None:
    host = make_ssh_host()
    server = subprocess.Popen(
        [
            *host.enter_argv(),
            "python3",
            "-m",
            "http.server",
            "18765",
            "--bind",
            "127.0.0.1",
            "--directory",
            "/proc/sys/kernel",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def scenario() -> None:
            connection = pool.connection(_target(host, client_key))
            await connection.open(pin=True)
            for _ in range(100):  # the http server starts in the background
                try:
                    path = await connection.forward("127.0.0.1", 18765)
                    reply = await _http_get(path, "/hostname")
                    if reply:
                        break
                except OSError:
                    pass
                await asyncio.sleep(0.1)
            assert reply.rstrip().endswith(host.hostname.encode())
            assert oct(path.stat().st_mode & 0o777) == "0o600"

            host.stop_sshd()  # the master dies with its session
            with pytest.raises(SSHError) as refused:
                await connection.run(["true"])
            assert refused.value.kind is SSHErrorKind.REFUSED
            assert host.address in refused.value.message
            host.start_sshd()
            assert (await connection.run(["hostname"])).text.strip() == host.hostname
            # The same socket path works again once the link is back.
            assert (await _http_get(path, "/hostname")).rstrip().endswith(host.hostname.encode())
            # A forward no longer needed goes away (socket and all), and only it.
            other = await connection.forward("127.0.0.1", 18766)
            await connection.unforward("127.0.0.1", 18766)
            assert not other.exists() and path.exists()
            with pytest.raises(OSError):
                await _http_get(other, "/hostname")
            assert (await _http_get(path, "/hostname")).rstrip().endswith(host.hostname.encode())
            await pool.close()

        run(scenario())
    finally:
        server.kill()


def test_a_restarted_server_adopts_the_running_master(
    tmp_path: Path, ssh_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    async def first() -> Path:
        pool = SSHPool(tmp_path / "server" / "ssh")
        connection = pool.connection(_target(ssh_hosts[0], client_key))
        await connection.open(pin=True)
        return connection.control  # not closed: as if the server was killed

    control = run(first())
    assert isinstance(control, Path) and control.exists()

    async def second() -> None:
        pool = SSHPool(tmp_path / "server" / "ssh")
        connection = pool.connection(_target(ssh_hosts[0], client_key))
        assert await connection._master_alive()
        assert (await connection.run(["hostname"])).text.strip() == ssh_hosts[0].hostname
        await pool.close()
        assert not control.exists()

    run(second())


def test_refusals_are_one_sentence_naming_the_host(
    pool: SSHPool,
    ssh_hosts: list[SSHHost],
    make_ssh_host: Callable[..., SSHHost],
    client_key: ClientKey,
    tmp_path: Path,
) -> None:
    host = ssh_hosts[0]
    other_key = make_key(tmp_path / "other")

    async def expect(target: SSHTarget, *kinds: SSHErrorKind, pin: bool = True) -> str:
        with pytest.raises(SSHError) as error:
            await pool.connection(target).open(pin=pin)
        assert error.value.kind in kinds, error.value.message
        assert "\n" not in error.value.message
        return error.value.message

    async def scenario() -> None:
        message = await expect(_target(host, other_key), SSHErrorKind.AUTH)
        assert f"root@{host.address}" in message and str(other_key.path) in message
        message = await expect(_target(host, client_key, user="nosuchuser"), SSHErrorKind.AUTH)
        assert "nosuchuser" in message
        # An address inside the test network that no host holds: no route (the bridge answers for it).
        message = await expect(
            SSHTarget(f"10.250.{host.address.split('.')[2]}.250", identity_file=str(client_key.path)),
            SSHErrorKind.UNREACHABLE,
            SSHErrorKind.TIMEOUT,
        )
        assert "did not answer" in message or "is unreachable" in message
        message = await expect(
            SSHTarget(host.address, port=2222, identity_file=str(client_key.path)), SSHErrorKind.REFUSED
        )
        assert "2222" in message
        message = await expect(
            SSHTarget(host.address, identity_file=str(tmp_path / "missing")), SSHErrorKind.KEY_FILE
        )
        assert "does not exist" in message
        loose = tmp_path / "loose"
        loose.write_bytes(client_key.path.read_bytes())
        loose.chmod(0o644)
        message = await expect(SSHTarget(host.address, identity_file=str(loose)), SSHErrorKind.KEY_FILE)
        assert "chmod 600" in message
        # Not pinned yet, and not asked to pin: refused.
        fresh = make_ssh_host()
        await expect(_target(fresh, client_key), SSHErrorKind.HOST_KEY_UNKNOWN, pin=False)
        await pool.connection(_target(fresh, client_key)).open(pin=True)
        await pool.forget(_target(fresh, client_key))
        # A changed host key: refused, even when pinning.
        fresh.stop_sshd()
        fresh.new_host_key()
        fresh.start_sshd()
        message = await expect(_target(fresh, client_key), SSHErrorKind.HOST_KEY_CHANGED)
        assert fresh.address in message and "known_hosts" in message
        await pool.close()

    run(scenario())


def test_tcp_forwarding_refused_by_sshd_is_named(
    pool: SSHPool, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey
) -> None:
    host = make_ssh_host()
    host.sshd_config["AllowTcpForwarding"] = "no"
    host.stop_sshd()
    host.start_sshd()

    async def scenario() -> None:
        connection = pool.connection(_target(host, client_key))
        await connection.open(pin=True)
        with pytest.raises(SSHError) as error:
            await connection.check_forwarding("127.0.0.1", 22)
        assert error.value.kind is SSHErrorKind.FORWARDING
        assert "AllowTcpForwarding" in error.value.message
        await pool.close()

    run(scenario())


def test_the_agent_zipapp_runs_on_a_host_and_answers_through_a_forward(
    pool: SSHPool, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey, tmp_path: Path
) -> None:
    from dstack.server.backends.agent_client import AgentClient
    from dstack.server.remote.artifact import agent_zipapp

    host = make_ssh_host()
    artifact = agent_zipapp(tmp_path / "artifacts")

    async def scenario() -> None:
        connection = pool.connection(_target(host, client_key))
        await connection.open(pin=True)
        await connection.upload(artifact.path, f".dstack/agent/{artifact.name}")
        # The token travels on stdin, never in an argv that `ps` on the host would show.
        start = (
            "read -r DSTACK_AGENT_TOKEN; export DSTACK_AGENT_TOKEN; "
            f'setsid python3 .dstack/agent/{artifact.name} --work-dir "$HOME/.dstack/agent/work" '
            "</dev/null >.dstack/agent/agent.log 2>&1 &"
        )
        result = await connection.run(["sh", "-c", start], input=b"secret-token\n")
        assert result.returncode == 0, result.error_text
        info = None
        for _ in range(100):
            cat = await connection.run(["cat", ".dstack/agent/work/agent.json"])
            if cat.returncode == 0:
                info = __import__("json").loads(cat.stdout)
                break
            await asyncio.sleep(0.05)
        assert info is not None and info["host"] == "127.0.0.1"
        socket_path = await connection.forward("127.0.0.1", int(info["port"]))
        client = AgentClient("http://agent", "secret-token", socket_path=str(socket_path))
        facts = await client.host()
        assert facts["cpus"] >= 1
        await client.close()
        await pool.close()

    run(scenario())
    # The agent runs on the host, detached from the SSH session that started it.
    assert any("dstack-agent" in Path(f"/proc/{pid}/cmdline").read_text() for pid in host.pids())
