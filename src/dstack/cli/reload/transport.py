"""The --reload requests to the server: send a batch, compare files. One kept-alive connection of its
own, beside the one that streams the output, so an edit never waits behind the stream."""

from __future__ import annotations

import json
from typing import IO, Any
from urllib.parse import quote

from dstack.api.client import Client
from dstack.api.errors import ServerUnreachable
from dstack.api.http import Connection
from dstack.cli.reload.batch import Batch
from dstack.code.blobs import header as blob_header

TIMEOUT = 120.0


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
    def __init__(self, client: Client, run_name: str, *, submitted: bool = True) -> None:
        self._client = client
        project = f"/api/project/{quote(client.project, safe='')}"
        self._path = f"{project}/runs/{quote(run_name, safe='')}/files"
        self._code = f"{project}/code"
        self._conn: Connection | None = None
        # `dstack run` watches before it submits: until then, "no such run" means "not yet", not "gone".
        self.submitted = submitted

    def send_batch(self, batch: Batch) -> dict[str, Any]:
        """The batch's contents the project lacks (through the code store), then its changes."""
        if batch.contents:
            wanted = b"".join(blob_header(sha256, len(data)) for sha256, data in batch.contents.items())
            answer = self._exchange(self._code + "/missing", "application/octet-stream", wanted, len(wanted))
            missing = [sha256 for sha256 in answer.get("missing", []) if sha256 in batch.contents]
            if missing:
                stream = b"".join(blob_header(h, len(batch.contents[h])) + batch.contents[h] for h in missing)
                self._exchange(self._code + "/blobs", "application/octet-stream", stream, len(stream))
        payload = json.dumps({"delete": batch.deletes, "put": batch.entries}).encode()
        return self._exchange(self._path, "application/json", payload, len(payload))

    def compare(self, entries: list[list[Any]]) -> dict[str, Any]:
        payload = json.dumps({"entries": entries}).encode()
        return self._exchange(self._path + "/compare", "application/json", payload, len(payload))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _exchange(self, path: str, content_type: str, body: IO[bytes] | bytes, length: int) -> dict[str, Any]:
        if self._conn is None:
            self._conn = self._client.connect(timeout=TIMEOUT)
        try:
            response = self._client.exchange(
                self._conn, "POST", path, {"Content-Type": content_type}, body, length=length
            )
            data = response.read()
        except (ServerUnreachable, OSError) as e:
            self.close()
            raise LinkDown(f"cannot reach the server at {self._client.url} ({e})") from e
        if response.status in (200, 201):
            try:
                return dict(json.loads(data))
            except (ValueError, TypeError) as e:
                raise Refused("the server answered something that is not JSON") from e
        if response.status == 404 and not self.submitted:
            raise NotReady("the run is not submitted yet")
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
