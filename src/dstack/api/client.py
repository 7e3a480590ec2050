"""The Python client of the dstack server API. The CLI does everything through it, and so can you:

    from dstack.api import Client
    client = Client.from_config()
    for run in client.list_runs():
        print(run["name"], run["status"])

Built on a lean HTTP/1.1 client (`dstack.api.http`) with one kept-alive connection: it imports in a few
milliseconds, which keeps the CLI fast.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from dstack.api.config import load_config
from dstack.api.errors import APIError, NotConfigured, NotFound, ServerUnreachable, Unauthorized
from dstack.api.http import Connection, Response, StaleConnection
from dstack.api.stream import AttachStream
from dstack.core.text import clip

if TYPE_CHECKING:
    from dstack.code.snapshot import CodeSnapshot

DEFAULT_TIMEOUT = 60.0
APPLY_TIMEOUT = 900.0  # applying a fleet connects to every new host
UPLOAD_CHUNK = 1024 * 1024


def _check_hostname(name: str) -> None:
    """Raises UnicodeError for a name no resolver takes, as the idna codec does; an ASCII name is checked
    here (each label 1 to 63 characters), without importing that codec: ~1 ms of every command."""
    if not name.isascii():
        name.encode("idna")
        return
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if any(not 0 < len(label) < 64 for label in labels):
        raise UnicodeError("label empty or too long")


class Client:
    def __init__(
        self, url: str, token: str, project: str = "main", *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        try:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("not an http(s) URL")
            parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
            _check_hostname(parts.hostname)
        except (ValueError, UnicodeError) as e:
            raise APIError(f"The server URL '{clip(url)}' is not valid: {clip(str(e))}") from None
        self.url = url.rstrip("/")
        self.token = token
        self.project = project
        self.timeout = timeout
        self._conn: Connection | None = None

    @classmethod
    def from_config(cls, project: str | None = None) -> Client:
        entry = load_config().default(project)
        if entry is None:
            raise NotConfigured("No dstack server is configured; run dstack config --url URL --token TOKEN")
        return cls(entry.url, entry.token, entry.name)

    # -- transport ---------------------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> Connection:
        """A new connection to the server (streams use their own, so requests can go on beside them)."""
        return Connection(self.url, timeout or self.timeout)

    def exchange(
        self,
        conn: Connection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: Any = None,
        **kwargs: Any,
    ) -> Response:
        """One request on `conn` (kept alive), retried once on a fresh socket if the server had closed it."""
        try:
            try:
                return conn.request(method, target, self._headers(headers), body, **kwargs)
            except StaleConnection:
                if hasattr(body, "seek"):
                    body.seek(0)
                return conn.request(method, target, self._headers(headers), body, **kwargs)
        except OSError as e:
            conn.close()
            raise ServerUnreachable(_unreachable_message(self.url, e)) from e

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", "User-Agent": "dstack-cli"}
        if extra:
            headers.update(extra)
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> tuple[int, bytes]:
        """Send one request on the kept-alive connection; JSON (or `raw` bytes) in, bytes out. Raises
        APIError subclasses."""
        if params:
            path = f"{path}?{urlencode({k: _param(v) for k, v in params.items() if v is not None})}"
        if raw is not None:
            payload, headers = raw, {"Content-Type": "application/octet-stream"}
        else:
            payload = json.dumps(body).encode() if body is not None else b""
            headers = {"Content-Type": "application/json"} if body is not None else {}
        if self._conn is None:
            self._conn = self.connect()
        response = self.exchange(self._conn, method, path, headers, payload)
        try:
            data = response.read()
        except OSError as e:
            self.close()
            raise ServerUnreachable(_unreachable_message(self.url, e)) from e
        if response.status not in ok:
            raise error_for(response.status, data)
        return response.status, data

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        _, data = self.request(method, path, **kwargs)
        return json.loads(data) if data else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _project_path(self, suffix: str) -> str:
        return f"/api/project/{quote(self.project, safe='')}{suffix}"

    # -- endpoints ---------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.json("GET", "/api/health")

    def me(self) -> dict[str, Any]:
        return self.json("GET", "/api/users/me")

    def get_project(self) -> dict[str, Any]:
        return self.json("GET", f"/api/projects/{quote(self.project, safe='')}")

    def plan(self, spec: dict[str, Any], code_hash: str | None = None) -> dict[str, Any]:
        """With `code_hash`, the plan says whether the project has that code (`has_code`; a server that
        does not know the parameter leaves it out)."""
        params = {"code_hash": code_hash} if code_hash else None
        return self.json("POST", self._project_path("/runs/plan"), body={"spec": spec}, params=params)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", self._project_path("/runs/submit"), body={"spec": spec})

    def list_runs(
        self, *, all: bool = False, limit: int | None = None, before: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; `before` pages on (with all): "SUBMITTED_AT:ID" of the last run of a page."""
        params = {"all": all, "limit": limit, "before": before}
        return self.json("GET", self._project_path("/runs"), params=params)

    def run_history(self, name: str) -> list[dict[str, Any]]:
        return self.json("GET", self._project_path(f"/runs/{quote(name, safe='')}/history"))

    def list_projects(self) -> list[dict[str, Any]]:
        return self.json("GET", "/api/projects")

    def list_hosts(self) -> list[dict[str, Any]]:
        return self.json("GET", self._project_path("/hosts"))

    def offers(self, query: dict[str, Any]) -> dict[str, Any]:
        """`dstack offer`'s answer for its flags: {"gpu", "cpu", "memory", "disk", "backends", "max_price",
        "image"}, each optional."""
        return self.json("POST", self._project_path("/offers"), body=query)

    def ui_sign_in_link(self, project: str | None = None) -> dict[str, Any]:
        """{"url", "expires_in"}: a one-time link that opens the web UI signed in as this client's user."""
        return self.json("POST", "/api/ui/sign-in", body={"project": project})

    def get_run(self, name: str) -> dict[str, Any]:
        return self.json("GET", self._project_path(f"/runs/{quote(name, safe='')}"))

    def stop(self, names: list[str], *, abort: bool = False) -> list[dict[str, Any]]:
        return self.json("POST", self._project_path("/runs/stop"), body={"names": names, "abort": abort})

    def delete(self, names: list[str], *, finished: bool = False) -> list[str]:
        """Delete finished runs and their output; returns the names deleted."""
        body = {"names": names, "finished": finished}
        return list(self.json("POST", self._project_path("/runs/delete"), body=body)["deleted"])

    def list_secrets(self) -> list[dict[str, Any]]:
        """The project's secrets: names, lengths and times, never values."""
        return self.json("GET", self._project_path("/secrets"))

    def set_secret(self, name: str, value: str) -> dict[str, Any]:
        return self.json("PUT", self._project_path(f"/secrets/{quote(name, safe='')}"), body={"value": value})

    def delete_secret(self, name: str) -> None:
        self.request("DELETE", self._project_path(f"/secrets/{quote(name, safe='')}"))

    def has_code(self, code_hash: str) -> bool:
        status, _ = self.request("GET", self._project_path(f"/code/{code_hash}"), ok=(200, 404))
        return status == 200

    def missing_code(self, snapshot: CodeSnapshot) -> list[str] | None:
        """None if the project has this code already; else the contents it lacks (their sha256)."""
        if self.has_code(snapshot.code_hash):
            return None
        from dstack.code.blobs import header

        wanted = b"".join(header(sha256, source.status.st_size) for sha256, source in snapshot.blobs.items())
        _, data = self.request("POST", self._project_path("/code/missing"), raw=wanted)
        return list(json.loads(data)["missing"])

    def send_code(
        self, snapshot: CodeSnapshot, missing: list[str], progress: Callable[[int], None] | None = None
    ) -> None:
        """Upload the contents named in `missing` (one streamed request), then the manifest."""
        from dstack.code.blobs import BlobBody

        if missing:
            # A connection of its own: a body cut short by a file changing mid-way leaves it unusable.
            self._on_own_connection(
                "POST",
                self._project_path("/code/blobs"),
                "application/octet-stream",
                BlobBody(snapshot, missing),
                max(self.timeout, 300),
                progress=progress,
            )
        self.request("PUT", self._project_path(f"/code/{snapshot.code_hash}"), raw=snapshot.manifest)

    def upload_code(self, snapshot: CodeSnapshot, progress: Callable[[int], None] | None = None) -> str:
        """Make sure the server holds the snapshot, sending only what it lacks; returns the code hash for
        a run spec's `code_hash`. Take the snapshot with dstack.code.snapshot_code (a code root) or
        dstack.code.snapshot_paths (files and folders placed at paths of their own)."""
        missing = self.missing_code(snapshot)
        if missing is not None:
            self.send_code(snapshot, missing, progress)
        return snapshot.code_hash

    # -- fleets ------------------------------------------------------------------------------------------

    def plan_fleet(self, configuration: dict[str, Any]) -> dict[str, Any]:
        """What applying this `type: fleet` configuration would do: hosts to add, keep, retry, remove."""
        return self.json("POST", self._project_path("/fleets/plan"), body={"configuration": configuration})

    def apply_fleet(
        self,
        configuration: dict[str, Any],
        identity_files: dict[str, bytes] | None = None,
        *,
        force: bool = False,
        timeout: float = APPLY_TIMEOUT,
    ) -> dict[str, Any]:
        """Apply a fleet: connect to its new hosts, install the agent, remove the hosts that left it.

        `identity_files` maps each identity_file path as the configuration writes it to the key's bytes
        (the server connects with them). `force` stops the runs on hosts that leave the fleet."""
        import base64

        body = {
            "configuration": configuration,
            "identity_files": {
                name: base64.b64encode(data).decode() for name, data in (identity_files or {}).items()
            },
            "force": force,
        }
        return self._json_waiting("POST", self._project_path("/fleets/apply"), body, timeout)

    def list_fleets(self) -> list[dict[str, Any]]:
        return self.json("GET", self._project_path("/fleets"))

    def get_fleet(self, name: str) -> dict[str, Any]:
        return self.json("GET", self._project_path(f"/fleets/{quote(name, safe='')}"))

    def delete_fleets(
        self, names: list[str], *, force: bool = False, timeout: float = APPLY_TIMEOUT
    ) -> list[str]:
        """Delete fleets (their agents stopped); `force` stops the runs on their hosts first."""
        body = {"names": names, "force": force}
        return self._json_waiting("POST", self._project_path("/fleets/delete"), body, timeout)["deleted"]

    def _json_waiting(self, method: str, path: str, body: Any, timeout: float) -> Any:
        """A request that may take long (connecting to hosts), on a connection of its own."""
        payload = json.dumps(body).encode()
        return json.loads(self._on_own_connection(method, path, "application/json", payload, timeout))

    def _on_own_connection(
        self, method: str, path: str, content_type: str, body: Any, timeout: float, **kwargs: Any
    ) -> bytes:
        """One request on a connection of its own (long, or big); the answer's body."""
        conn = self.connect(timeout=timeout)
        try:
            response = self.exchange(conn, method, path, {"Content-Type": content_type}, body, **kwargs)
            data = response.read()
        except OSError as e:
            raise ServerUnreachable(_unreachable_message(self.url, e)) from e
        finally:
            conn.close()
        if response.status not in (200, 201):
            raise error_for(response.status, data)
        return data

    def logs(
        self, name: str, *, offset: int = 0, tail: int | None = None, node: int | None = None
    ) -> Iterator[bytes]:
        """The run's output so far, in chunks (a multi-node run's master's, or node `node`'s)."""
        query = {"offset": offset, "tail": tail, "node": node}
        params = urlencode({k: v for k, v in query.items() if v is not None})
        conn = self.connect()
        try:
            response = self.exchange(
                conn, "GET", self._project_path(f"/runs/{quote(name, safe='')}/logs?{params}"), {}
            )
            if response.status != 200:
                raise error_for(response.status, response.read())
            while chunk := response.read1(UPLOAD_CHUNK):
                yield chunk
        except OSError as e:
            raise ServerUnreachable(_unreachable_message(self.url, e)) from e
        finally:
            conn.close()

    def attach(
        self,
        name: str,
        *,
        offset: int = 0,
        tail: int | None = None,
        follow: bool = True,
        idle_timeout: float = 10.0,
        node: int | None = None,
    ) -> AttachStream:
        """Status changes and output of a run, live, as frames (see dstack.core.frames); a multi-node run's
        master's output, or node `node`'s."""
        params = {"offset": offset, "follow": _param(follow)}
        if tail is not None:
            params["tail"] = tail
        if node is not None:
            params["node"] = node
        path = self._project_path(f"/runs/{quote(name, safe='')}/attach?{urlencode(params)}")
        conn = self.connect(timeout=idle_timeout)
        response = self.exchange(conn, "GET", path, {})
        if response.status != 200:
            try:
                data = response.read()
            except OSError:
                data = b""
            conn.close()
            raise error_for(response.status, data)
        return AttachStream(conn, response)


def _param(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def error_for(status: int, data: bytes) -> APIError:
    try:
        message = str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        message = f"The server answered HTTP {status}"
    if status == 401:
        return Unauthorized(message, status)
    if status == 404:
        return NotFound(message, status)
    return APIError(message, status)


def _unreachable_message(url: str, error: BaseException) -> str:
    if isinstance(error, (ConnectionRefusedError, socket.gaierror)):
        return f"Cannot reach the dstack server at {url}: nothing answers there (is it running?)"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"The dstack server at {url} did not answer in time"
    return f"Lost the connection to the dstack server at {url}: {error}"
