"""The embedded server (SPEC §9): the port it takes, and how an attached `dstack run` survives it dying."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.test_run import task, write

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hold(port: int) -> socket.socket | None:
    try:
        return socket.create_server(("127.0.0.1", port))
    except OSError:
        return None


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _saved_entry(env: DstackEnv) -> dict[str, object]:
    return json.loads((env.home / ".dstack" / "config.yml").read_text())["projects"][0]


SERVE = "python3 -m http.server 7860 --bind 127.0.0.1"


def test_the_guides_port_3000_command_works_on_a_fresh_machine(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    if not (_port_is_free(3000) and _port_is_free(7860)):
        pytest.skip("another program on this shared machine holds port 3000 or 7860")
    task(project_dir, [SERVE], name="serve.dstack.yml", extra="ports:\n  - 7860\n")
    write(project_dir / "index.html", "served through 3000")
    # Verbatim from the tasks guide (plus -y: no one is at the prompt).
    cli = dstack_env.popen("run", ".", "-f", "serve.dstack.yml", "--port", "3000:7860", "-y", cwd=project_dir)
    try:

        def fetched() -> bytes | None:
            if cli.poll() is not None:
                stderr = cli.stderr.read() if cli.stderr else ""
                if "is in use" in stderr:  # the machine is shared: another program took it meanwhile
                    pytest.skip("another program took port 3000 while the test ran")
                raise AssertionError(f"dstack run exited {cli.returncode}: {stderr}")
            try:
                return urllib.request.urlopen("http://127.0.0.1:3000/index.html", timeout=5).read()
            except OSError:
                return None

        assert wait_for(fetched, timeout=120, what="the task on 127.0.0.1:3000", interval=0.2) == (
            b"served through 3000"
        )
        name = dstack_env.run("ps").stdout.splitlines()[1].split()[0]
        assert dstack_env.run("stop", name, "-y").returncode == 0
        cli.wait(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    url = str(_saved_entry(dstack_env)["url"])
    assert not url.endswith(":3000"), url


def test_the_embedded_server_avoids_common_ports_and_falls_back_to_a_free_one(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    from dstack.core.defaults import DEFAULT_SERVER_PORT

    assert DEFAULT_SERVER_PORT not in (3000, 3001, 5000, 5173, 6006, 7860, 8000, 8080, 8501, 8888, 9000)
    task(project_dir, ["true"])
    # Someone else has the port now: this test holds it (another program holding it could let go of it
    # at any moment, e.g. another test session's server).
    holder = wait_for(lambda: _hold(DEFAULT_SERVER_PORT), timeout=60, what=f"port {DEFAULT_SERVER_PORT}")
    try:
        dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)
    finally:
        holder.close()
    url = str(_saved_entry(dstack_env)["url"])
    assert not url.endswith(f":{DEFAULT_SERVER_PORT}"), url


def test_a_saved_embedded_server_keeps_its_port(dstack_env: DstackEnv, project_dir: Path) -> None:
    # A config saved by an older version (whose default was 3000): the server comes back where it was.
    port = _free_port()
    config = {
        "projects": [
            {
                "name": "main",
                "url": f"http://127.0.0.1:{port}",
                "token": "a-token-saved-earlier",
                "default": True,
                "embedded": True,
            }
        ]
    }
    write(dstack_env.home / ".dstack" / "config.yml", json.dumps(config))
    result = dstack_env.run("ps")
    assert result.returncode == 0, result.stderr
    assert f"Restarted a dstack server in the background at http://127.0.0.1:{port}" in result.stderr
    assert _saved_entry(dstack_env)["token"] == "a-token-saved-earlier"
