"""The --reload requests to the server: send a batch, compare files. One kept-alive connection of its
own, beside the one that streams the output, so an edit never waits behind the stream."""

from __future__ import annotations

import http.client
import json
from typing import IO, Any
from urllib.parse import quote

from dstack.api.client import Client

TIMEOUT = 120.0
_SEND_CHUNK = 1024 * 1024


class SyncError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotReady(SyncError):
    """The task does not take changes yet (it is not running): keep them and retry."""


class Finished(SyncError):
    """The run has finished: there is nothing to sync any more."""


class LinkDown(SyncError):
    """No answer from the server or the task's host: keep the changes and retry."""


class Refused(SyncError):
    """The server refused the request itself (a bug or a limit): retrying the same would not help."""


class Transport:
    def __init__(self, client: Client, run_name: str) -> None:
        self._client = client
        self._path = f"/api/project/{quote(client.project, safe='')}/runs/{quote(run_name, safe='')}/files"
        self._conn: http.client.HTTPConnection | None = None

    def send_batch(self, body: IO[bytes], length: int) -> dict[str, Any]:
        def send(conn: http.client.HTTPConnection) -> None:
            body.seek(0)
            conn.putrequest("POST", self._path)
            for key, value in self._headers("application/x-tar", length).items():
                conn.putheader(key, value)
            conn.endheaders()
            while chunk := body.read(_SEND_CHUNK):
                conn.send(chunk)

        return self._exchange(send)

    def compare(self, entries: list[list[Any]]) -> dict[str, Any]:
        payload = json.dumps({"entries": entries}).encode()

        def send(conn: http.client.HTTPConnection) -> None:
            conn.request(
                "POST",
                self._path + "/compare",
                body=payload,
                headers=self._headers("application/json", len(payload)),
            )

        return self._exchange(send)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _headers(self, content_type: str, length: int) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._client.token}",
            "User-Agent": "dstack-cli",
            "Content-Type": content_type,
            "Content-Length": str(length),
        }

    def _exchange(self, send: Any) -> dict[str, Any]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._client.connect(timeout=TIMEOUT)
            try:
                send(self._conn)
                response = self._conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # The server closed the idle kept-alive connection: once more on a fresh one.
                self.close()
                if attempt == 2:
                    raise LinkDown(f"the server at {self._client.url} closed the connection ({e})") from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise LinkDown(f"cannot reach the server at {self._client.url} ({e})") from e
        if response.status == 200:
            try:
                return dict(json.loads(data))
            except (ValueError, TypeError) as e:
                raise Refused("the server answered something that is not JSON") from e
        raise _error(response.status, data)


def _error(status: int, data: bytes) -> SyncError:
    try:
        message = str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        message = f"the server answered HTTP {status}"
    if status == 409:
        return NotReady(message)
    if status in (404, 410):
        return Finished(message)
    if status >= 500:
        return LinkDown(message)
    return Refused(message)
