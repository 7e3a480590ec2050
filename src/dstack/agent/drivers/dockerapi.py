"""A small client of the Docker Engine API over its unix socket (standard library only: http.client).

Only what the agent needs: ping, images (inspect, pull, commit, remove) and containers (create, attach,
start, wait, stop, kill, inspect, list, remove). The socket is DOCKER_HOST when that is a unix:// URL,
else /var/run/docker.sock. Paths carry no API version, so the daemon's own is used.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import tarfile
import threading
from typing import IO, Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = "/var/run/docker.sock"
REQUEST_TIMEOUT_SECONDS = 30.0
PULL_READ_TIMEOUT_SECONDS = 600.0  # the longest silence accepted while a layer downloads
_MAX_HEADER_BYTES = 64 * 1024
_CANCEL_POLL_SECONDS = 0.25


class DockerCancelled(Exception):
    pass


class DockerError(Exception):
    """The daemon answered with an error (or not at all); the message is the daemon's own."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


def docker_socket() -> Optional[str]:
    """The daemon's unix socket, or None when DOCKER_HOST names something else (tcp:// is not supported)."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :] or DEFAULT_SOCKET
    return None


class RawBody:
    """A request body sent as it is (a tar stream), not as JSON."""

    def __init__(self, stream: IO[bytes], length: int, content_type: str = "application/x-tar") -> None:
        self.stream = stream
        self.length = length
        self.content_type = content_type


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerClient:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    # -- plumbing ----------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        query: Optional[Dict[str, Any]] = None,
        body: Any = None,
        timeout: Optional[float] = REQUEST_TIMEOUT_SECONDS,
    ) -> Tuple[_UnixConnection, http.client.HTTPResponse]:
        url = path + ("?" + urlencode(query) if query else "")
        data: Any
        if isinstance(body, RawBody):
            data, headers = (
                body.stream,
                {"Content-Type": body.content_type, "Content-Length": str(body.length)},
            )
        else:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
        connection = _UnixConnection(self.socket_path, timeout)
        try:
            connection.request(method, url, body=data, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise DockerError(f"Cannot reach the Docker daemon at {self.socket_path}: {e}") from e
        if response.status >= 400:
            try:
                text = response.read()
            except (OSError, http.client.HTTPException):
                text = b""
            connection.close()
            raise DockerError(_error_text(text, response.status), response.status)
        return connection, response

    def _call(
        self,
        method: str,
        path: str,
        query: Optional[Dict[str, Any]] = None,
        body: Any = None,
        timeout: Optional[float] = REQUEST_TIMEOUT_SECONDS,
    ) -> Any:
        connection, response = self._send(method, path, query, body, timeout)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise DockerError(f"The Docker daemon stopped answering: {e}") from e
        finally:
            connection.close()
        if not data or not response.getheader("Content-Type", "").startswith("application/json"):
            return None
        return json.loads(data)

    # -- daemon and images -------------------------------------------------------------------------------

    def version(self, timeout: float = REQUEST_TIMEOUT_SECONDS) -> Dict[str, Any]:
        result = self._call("GET", "/version", timeout=timeout)
        return result if isinstance(result, dict) else {}

    def inspect_image(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            return self._call("GET", f"/images/{quote(name, safe='/:@')}/json")
        except DockerError as e:
            if e.status == 404:
                return None
            raise

    def pull(
        self,
        name: str,
        on_progress: Callable[[str], None],
        cancelled: Callable[[], bool],
        auth: Optional[Dict[str, str]] = None,
    ) -> None:
        """Pull `name`, passing each progress status line on; raises DockerError if the pull fails.

        `auth` ({username, password}) goes to the daemon as the registry credentials of this pull only.

        The pull runs in a helper thread, so that a stop of the job ends it at once (by closing its
        connection, which makes the daemon give it up) even while the registry does not answer.
        """
        connections: List[_UnixConnection] = []
        errors: List[BaseException] = []

        def pull() -> None:
            try:
                self._pull(name, on_progress, connections, auth)
            except BaseException as e:
                errors.append(e)

        worker = threading.Thread(target=pull, name="docker-pull", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(_CANCEL_POLL_SECONDS)
            if worker.is_alive() and cancelled():
                for connection in connections:
                    _shutdown(connection)
                worker.join(REQUEST_TIMEOUT_SECONDS)
                raise DockerCancelled(f"The pull of {name} was cancelled")
        if errors:
            raise errors[0]

    def _pull(
        self,
        name: str,
        on_progress: Callable[[str], None],
        connections: List[_UnixConnection],
        auth: Optional[Dict[str, str]],
    ) -> None:
        image, tag = split_reference(name)
        query = {"fromImage": image, "tag": tag} if tag else {"fromImage": image}
        connection = _UnixConnection(self.socket_path, PULL_READ_TIMEOUT_SECONDS)
        connections.append(connection)
        headers = {}
        if auth is not None:
            credentials = {**auth, "serveraddress": registry_of(name)}
            headers["X-Registry-Auth"] = base64.urlsafe_b64encode(json.dumps(credentials).encode()).decode()
        try:
            connection.request("POST", "/images/create?" + urlencode(query), headers=headers)
            response = connection.getresponse()
            if response.status >= 400:
                raise DockerError(_error_text(response.read(), response.status), response.status)
            for raw in response:
                line = raw.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("error"):
                    raise DockerError(str(event["error"]))
                if event.get("status"):
                    on_progress(str(event["status"]))
        except (OSError, http.client.HTTPException) as e:
            raise DockerError(f"The pull of {name} was cut off: {e}") from e
        finally:
            connection.close()

    def commit(self, container_id: str, repo: str, tag: str, config: Dict[str, Any]) -> str:
        query = {"container": container_id, "repo": repo, "tag": tag, "pause": "false"}
        result = self._call("POST", "/commit", query, body=config, timeout=None)
        return str(result["Id"])

    def remove_image(self, name: str) -> None:
        self._call("DELETE", f"/images/{quote(name, safe='/:@')}", {"noprune": "false"})

    # -- containers --------------------------------------------------------------------------------------

    def create_container(self, config: Dict[str, Any], name: Optional[str] = None) -> str:
        query = {"name": name} if name else None
        return str(self._call("POST", "/containers/create", query, body=config)["Id"])

    def attach(self, container_id: str) -> Tuple[socket.socket, bytes]:
        """A raw socket carrying the container's multiplexed stdout and stderr, from its first byte.

        Returns the socket and whatever stream bytes arrived together with the response headers.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REQUEST_TIMEOUT_SECONDS)
        try:
            sock.connect(self.socket_path)
            request = (
                # Attached before the container starts, so the stream alone carries every byte; logs=1
                # would replay the log file too, and the daemon races the two: lines came out twice.
                f"POST /containers/{container_id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
            )
            sock.sendall(request.encode("ascii"))
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(4096)
                if not chunk or len(received) > _MAX_HEADER_BYTES:
                    raise DockerError("The Docker daemon closed the attach connection")
                received += chunk
        except OSError as e:
            sock.close()
            raise DockerError(f"Cannot attach to container {container_id[:12]}: {e}") from e
        except DockerError:
            sock.close()
            raise
        head, _, rest = received.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] not in ("101", "200"):
            sock.close()
            raise DockerError(f"Cannot attach to container {container_id[:12]}: {status_line}")
        sock.settimeout(None)  # the stream stays silent as long as the task prints nothing
        return sock, rest

    def logs(self, container_id: str) -> Any:
        """A file-like object of the container's multiplexed stdout and stderr so far, then as it comes
        (the daemon's log file: for a job taken over from an earlier agent, which read part of it)."""
        connection, response = self._send(
            "GET",
            f"/containers/{container_id}/logs",
            {"follow": "1", "stdout": "1", "stderr": "1"},
            timeout=None,
        )
        response.connection_ref = connection  # type: ignore[attr-defined]  # closed with the response
        return response

    def start(self, container_id: str) -> None:
        self._call("POST", f"/containers/{container_id}/start")

    def wait(self, container_id: str) -> int:
        """Block until the container is not running; its exit code."""
        result = self._call(
            "POST", f"/containers/{container_id}/wait", {"condition": "not-running"}, timeout=None
        )
        return int(result.get("StatusCode", 1)) if isinstance(result, dict) else 1

    def stop(self, container_id: str, grace_seconds: float) -> None:
        # The daemon waits the grace itself, then kills: the request must outlive it.
        seconds = max(0, round(grace_seconds))
        try:
            self._call(
                "POST",
                f"/containers/{container_id}/stop",
                {"t": seconds},
                timeout=seconds + REQUEST_TIMEOUT_SECONDS,
            )
        except DockerError as e:
            if e.status not in (304, 404):
                raise

    def kill(self, container_id: str) -> None:
        try:
            self._call("POST", f"/containers/{container_id}/kill", {"signal": "SIGKILL"})
        except DockerError as e:
            if e.status not in (404, 409):  # 409: it is not running
                raise

    def inspect_container(self, container_id: str) -> Optional[Dict[str, Any]]:
        try:
            return self._call("GET", f"/containers/{container_id}/json")
        except DockerError as e:
            if e.status == 404:
                return None
            raise

    def put_archive(self, container_id: str, path: str, archive: IO[bytes], length: int) -> None:
        """Extract a tar into the (created, not yet started) container's file system at `path`, as root."""
        connection, response = self._send(
            "PUT",
            f"/containers/{container_id}/archive",
            {"path": path},
            body=RawBody(archive, length),
            timeout=None,
        )
        try:
            response.read()
        finally:
            connection.close()

    def read_file(self, container_id: str, path: str, limit: int = 1024 * 1024) -> Optional[bytes]:
        """The content of one file of the container (None if it has none there)."""
        try:
            connection, response = self._send("GET", f"/containers/{container_id}/archive", {"path": path})
        except DockerError as e:
            if e.status == 404:
                return None
            raise
        try:
            data = response.read(limit + 64 * 1024)
        except (OSError, http.client.HTTPException) as e:
            raise DockerError(f"The Docker daemon stopped answering: {e}") from e
        finally:
            connection.close()
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                member = next((m for m in tar.getmembers() if m.isfile()), None)
                source = tar.extractfile(member) if member is not None else None
                return source.read(limit) if source is not None else None
        except tarfile.TarError:
            return None

    def list_containers(self, label: str) -> List[str]:
        filters = json.dumps({"label": [label]})
        result = self._call("GET", "/containers/json", {"all": "1", "filters": filters})
        return [str(c["Id"]) for c in result or []]

    def remove_container(self, container_id: str) -> None:
        try:
            self._call("DELETE", f"/containers/{container_id}", {"force": "1", "v": "1"})
        except DockerError as e:
            if e.status != 404:
                raise


def _shutdown(connection: _UnixConnection) -> None:
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def registry_of(name: str) -> str:
    """The registry an image reference names (`host[:port]/...`), or Docker Hub's."""
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "https://index.docker.io/v1/"


def split_reference(name: str) -> Tuple[str, Optional[str]]:
    """ "repo:tag" -> ("repo", "tag"); a digest or no tag keeps the reference whole."""
    if "@" in name:
        return name, None
    repo, sep, tag = name.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return name, "latest"


def _error_text(data: bytes, status: int) -> str:
    try:
        message = json.loads(data).get("message")
        if message:
            return str(message)
    except (ValueError, AttributeError):
        pass
    return f"the Docker daemon answered HTTP {status}"
