"""Code upload, end to end: only what the server lacks travels (counted on the wire), and a project can
never use code whose bytes it did not send (issue 13, item 7)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.api.client import Client
from dstack.api.errors import APIError
from dstack.code import snapshot_code
from dstack.code.blobs import header
from dstack.config import parse_configuration, parse_overrides, resolve_profile
from tests.e2e.harness import DSTACK, DstackEnv, wait_for
from tests.e2e.test_run import task, write

TOKEN = "code-upload-" + uuid.uuid4().hex


_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE) (/api/\S+) HTTP/1\.1\r\n")


class CountingProxy:
    """A TCP relay on loopback that counts the bytes the client sends through it: what really travels;
    and the paths of the requests it made."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.sent = 0
        self.paths: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def take(self) -> int:
        """Bytes sent since the last call."""
        with self._lock:
            sent, self.sent = self.sent, 0
        return sent

    def take_paths(self) -> list[str]:
        """The paths requested since the last call."""
        with self._lock:
            paths, self.paths = self.paths, []
        return paths

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        tail = b""  # a request line may straddle two reads
        try:
            while data := source.recv(1 << 20):
                if count:
                    seen = tail + data
                    with self._lock:
                        self.sent += len(data)
                        self.paths += [m.group(2).decode() for m in _REQUEST_LINE.finditer(seen)]
                    tail = seen[-256:]
                    if _REQUEST_LINE.search(tail):
                        tail = tail[tail.rindex(b"\r\n") + 2 :]  # counted already
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[DstackEnv, int]]:
    """A `dstack server` in its own HOME with a known admin token; yields it and its port."""
    home = DstackEnv(tmp_path / "server-home")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [DSTACK, "server", "--port", str(port)],
        env={**home.env, "DSTACK_SERVER_ADMIN_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _answers(port), timeout=60, what="the server to answer")
        yield home, port
    finally:
        process.terminate()
        process.wait(timeout=30)
        home.cleanup()


def _answers(port: int) -> bool:
    try:
        Client(f"http://127.0.0.1:{port}", TOKEN).health()
        return True
    except Exception:
        return False


def test_only_changed_files_travel_and_a_touch_sends_nothing(
    server: tuple[DstackEnv, int], dstack_env: DstackEnv, project_dir: Path
) -> None:
    _, port = server
    proxy = CountingProxy(port)
    try:
        dstack_env.run("config", "--url", f"http://127.0.0.1:{proxy.port}", "--token", TOKEN, check=True)
        files = 200
        for i in range(files):
            write(project_dir / "data" / f"part-{i:03}.bin", os.urandom(100_000).hex()[:100_000])
        write(project_dir / "weights.bin", os.urandom(200_000).hex())  # big: sent from its file
        task(project_dir, ["sha256sum data/part-007.bin weights.bin"])
        old = time.time() - 3600  # a user's files are older than this second (see snapshot's _RACY_NS)
        for path in project_dir.rglob("*"):
            os.utime(path, (old, old))
        time.sleep(0.05)
        proxy.take()
        proxy.take_paths()

        first = dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)
        assert "Uploading the code: 202 of 202 files" in first.stderr
        assert proxy.take() > files * 100_000 + 400_000
        weights = hashlib.sha256((project_dir / "weights.bin").read_bytes()).hexdigest()
        assert first.stdout.split()[2:] == [weights, "weights.bin"]

        edited = project_dir / "data" / "part-007.bin"
        edited.write_text(edited.read_text()[:-10] + "edited!!!\n")
        os.utime(edited, (old + 1, old + 1))
        second = dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)
        assert second.stdout.split()[0] == hashlib.sha256(edited.read_bytes()).hexdigest()
        assert "Uploading the code: 1 of 202 files, 97.7KB" in second.stderr
        assert any(p.endswith("/code/missing") for p in proxy.take_paths())
        sent = proxy.take()
        # The edited file, the manifest (~120 bytes a file) and the run's own requests; not the tree.
        assert 100_000 < sent < 100_000 + 202 * 200 + 64_000, sent

        os.utime(project_dir / "data" / "part-100.bin")  # a bare touch: new mtime, same bytes
        third = dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)
        assert third.stdout == second.stdout
        assert "Uploading the code" not in third.stderr
        assert proxy.take() < 64_000  # plan, submit, attach: no content, no manifest
        # The plan said the server has this code: not even a request asks.
        paths = proxy.take_paths()
        assert not [p for p in paths if "/code/" in p], paths
    finally:
        proxy.close()


def _add_project(server_home: DstackEnv, name: str) -> None:
    db = sqlite3.connect(server_home.home / ".dstack" / "server" / "data" / "sqlite.db")
    with db:
        owner = db.execute("SELECT owner_id FROM projects WHERE name = 'main'").fetchone()[0]
        db.execute(
            "INSERT INTO projects (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)",
            (str(uuid.uuid4()), name, owner, time.time()),
        )
    db.close()


def test_a_project_cannot_take_another_projects_code_by_naming_its_hash(
    server: tuple[DstackEnv, int], tmp_path: Path
) -> None:
    server_home, port = server
    _add_project(server_home, "other")
    url = f"http://127.0.0.1:{port}"
    code = tmp_path / "code"
    write(code / "secret.env", "API_KEY=only-for-main\n")
    write(code / "train.py", "print('main')\n")
    snapshot = snapshot_code(code, cache_dir=tmp_path / "cache")
    main, other = Client(url, TOKEN, "main"), Client(url, TOKEN, "other")
    main.upload_code(snapshot)
    assert main.has_code(snapshot.code_hash)

    # Naming the hash gets the other project nothing: not the code, not its contents.
    assert not other.has_code(snapshot.code_hash)
    assert sorted(other.missing_code(snapshot) or []) == sorted(snapshot.blobs)
    path = f"/api/project/other/code/{snapshot.code_hash}"
    for body in (b"", snapshot.manifest):  # the empty body, and the manifest itself
        with pytest.raises(APIError) as refused:
            other.request("PUT", path, raw=body)
        assert refused.value.status == 400
    assert not other.has_code(snapshot.code_hash)
    # Contents sent under another content's name are refused, so none can be claimed without its bytes.
    secret = hashlib.sha256((code / "secret.env").read_bytes()).hexdigest()
    forged = header(secret, 5) + b"wrong"
    with pytest.raises(APIError) as mismatch:
        other.request("POST", "/api/project/other/code/blobs", raw=forged)
    assert "does not match its hash" in mismatch.value.message
    assert secret in (other.missing_code(snapshot) or [])
    # And a run of the other project cannot name that code.
    configuration = parse_configuration("type: task\ncommands: [cat secret.env]\n", filename="t.dstack.yml")
    spec = {
        "configuration": configuration.model_dump(mode="json"),
        "profile": resolve_profile(configuration, None, parse_overrides()).model_dump(mode="json"),
        "commands": ["cat secret.env"],
        "code_hash": snapshot.code_hash,
    }
    with pytest.raises(APIError) as submit:
        other.submit(spec)
    assert "has not been uploaded" in submit.value.message

    # Sending the bytes themselves works, as for anyone who has them.
    other.upload_code(snapshot)
    assert other.has_code(snapshot.code_hash)


def test_reload_sends_contents_through_the_store_and_a_revert_sends_no_bytes_again(
    server: tuple[DstackEnv, int], dstack_env: DstackEnv, project_dir: Path
) -> None:
    from tests.e2e.test_reload import free_port, get, start, stop_cli, wait_served

    _, port = server
    proxy = CountingProxy(port)
    cli = None
    try:
        dstack_env.run("config", "--url", f"http://127.0.0.1:{proxy.port}", "--token", TOKEN, check=True)
        app_port = free_port()
        task(project_dir, [f"python3 -m http.server {app_port} --bind 127.0.0.1"])
        original = os.urandom(150_000)
        edited = os.urandom(150_000)
        (project_dir / "model.bin").write_bytes(original)
        cli = start(dstack_env, project_dir, "run", ".", "-y", "--reload")
        wait_for(lambda: get(app_port, "/model.bin") == (200, original), timeout=90, what="the task")
        time.sleep(0.5)  # the output stream and the port waiter settle; then count what the edits cost
        proxy.take()
        (project_dir / "model.bin").write_bytes(edited)
        wait_served(app_port, "/model.bin", (200, edited), "the edit")
        assert proxy.take() > len(edited)  # a new content: it travels (once)
        (project_dir / "model.bin").write_bytes(original)
        wait_served(app_port, "/model.bin", (200, original), "the revert")
        # The original content is in the project's store already: only the change list and the
        # stream's own frames travel now.
        assert proxy.take() < len(original) // 2
    finally:
        if cli is not None:
            stop_cli(cli)
        proxy.close()
