"""The attach stream's framing, shared by the server (writer) and the client (reader).

A frame is: 1 byte kind, 4 bytes big-endian payload length, payload.
  L  log bytes: 8 bytes big-endian offset of the first byte, then the bytes
  S  status (JSON): {"status", "status_message"}
  E  end (JSON): the run's final {"status", "exit_code", "termination_reason", "termination_message"}
  H  heartbeat (empty): the link is alive even when the task is silent
"""

from __future__ import annotations

import json
import struct
from typing import Any

LOG = b"L"
STATUS = b"S"
END = b"E"
HEARTBEAT = b"H"

HEADER = struct.Struct(">cI")
OFFSET = struct.Struct(">Q")
HEARTBEAT_INTERVAL = 3.0  # the client treats 10 s of silence as a dead link


def log_frame(offset: int, data: bytes) -> bytes:
    return log_header(offset, len(data)) + data


def log_header(offset: int, size: int) -> bytes:
    """The frame's header alone: a writer may send the data after it without copying it into one buffer."""
    return HEADER.pack(LOG, OFFSET.size + size) + OFFSET.pack(offset)


def json_frame(kind: bytes, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    return HEADER.pack(kind, len(body)) + body


def heartbeat_frame() -> bytes:
    return HEADER.pack(HEARTBEAT, 0)
