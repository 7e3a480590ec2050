"""OpenSSH's own error output turned into one sentence that names the host and the fix.

OpenSSH tells a client little (an unknown user and a refused key look the same, by design), so each
sentence says what the client can know and what to check.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

from dstack.server.ssh.target import SSHTarget

_MAX_QUOTED = 200


class SSHErrorKind(str, enum.Enum):
    UNREACHABLE = "unreachable"
    REFUSED = "connection_refused"
    AUTH = "auth"  # the key was refused (or the user does not exist: OpenSSH does not tell them apart)
    HOST_KEY_CHANGED = "host_key_changed"
    HOST_KEY_UNKNOWN = "host_key_unknown"
    KEY_FILE = "key_file"
    FORWARDING = "forwarding"
    TIMEOUT = "timeout"
    LOST = "lost"  # an established connection went away
    COMMAND = "command"  # the remote command failed
    OTHER = "other"


class SSHError(Exception):
    def __init__(self, kind: SSHErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def unreachable(self) -> bool:
        """The host did not answer (as opposed to answering with a refusal): worth trying again later."""
        return self.kind in (
            SSHErrorKind.UNREACHABLE,
            SSHErrorKind.REFUSED,
            SSHErrorKind.TIMEOUT,
            SSHErrorKind.LOST,
        )


_PATTERNS: list[tuple[re.Pattern[str], SSHErrorKind]] = [
    (
        re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed"),
        SSHErrorKind.HOST_KEY_CHANGED,
    ),
    (re.compile(r"No \S+ host key is known|Host key verification failed"), SSHErrorKind.HOST_KEY_UNKNOWN),
    (re.compile(r"UNPROTECTED PRIVATE KEY FILE|bad permissions"), SSHErrorKind.KEY_FILE),
    (re.compile(r"Load key .*: (invalid format|error in libcrypto)|no such identity"), SSHErrorKind.KEY_FILE),
    (re.compile(r"Permission denied \(|Too many authentication failures"), SSHErrorKind.AUTH),
    (
        re.compile(
            r"administratively prohibited|forwarding disabled|forwarding request failed", re.IGNORECASE
        ),
        SSHErrorKind.FORWARDING,
    ),
    (re.compile(r"Connection refused"), SSHErrorKind.REFUSED),
    (re.compile(r"timed out|Connection timeout", re.IGNORECASE), SSHErrorKind.TIMEOUT),
    (
        re.compile(
            r"No route to host|Network is unreachable|Could not resolve hostname|Name or service not known"
        ),
        SSHErrorKind.UNREACHABLE,
    ),
    (
        re.compile(
            r"Connection closed by|Connection reset|kex_exchange_identification|Broken pipe|closed by remote"
        ),
        SSHErrorKind.LOST,
    ),
]


def classify(stderr: str) -> SSHErrorKind:
    for pattern, kind in _PATTERNS:
        if pattern.search(stderr):
            return kind
    return SSHErrorKind.OTHER


def ssh_error(target: SSHTarget, stderr: str, known_hosts: Path) -> SSHError:
    """The one-sentence error for a failed connection to `target`, from what ssh printed."""
    kind = classify(stderr)
    host = target.label
    key = target.key_label
    messages = {
        SSHErrorKind.HOST_KEY_CHANGED: (
            f"The host key of {target.hostname} has changed since it was pinned, so dstack will not "
            f"connect to it; if the host was reinstalled, remove its line from {known_hosts} and apply "
            "the fleet again"
        ),
        SSHErrorKind.HOST_KEY_UNKNOWN: (
            f"The host key of {target.hostname} is not pinned; apply the fleet again to check and pin it"
        ),
        SSHErrorKind.KEY_FILE: (
            f"The identity file {key} for {host} cannot be used: {_last_line(stderr)}; "
            "it must be a private key readable only by you (chmod 600)"
        ),
        SSHErrorKind.AUTH: (
            f"{host} refused the key {key}: add its public key to that user's ~/.ssh/authorized_keys "
            "(or check that the user exists)"
        ),
        SSHErrorKind.FORWARDING: (
            f"sshd on {target.hostname} does not allow TCP forwarding, which dstack needs to reach its "
            "agent; set AllowTcpForwarding yes (or local) in its sshd_config"
        ),
        SSHErrorKind.REFUSED: (
            f"{target.hostname} refused the connection on port {target.port}: "
            "is sshd running and listening there?"
        ),
        SSHErrorKind.TIMEOUT: (
            f"{target.hostname}:{target.port} did not answer in time: "
            "check the address, the port and the network"
        ),
        SSHErrorKind.UNREACHABLE: f"{target.hostname} is unreachable: {_last_line(stderr)}",
        SSHErrorKind.LOST: f"The SSH connection to {host} was closed: {_last_line(stderr)}",
    }
    text = messages.get(kind) or f"Cannot connect to {host} over SSH: {_last_line(stderr) or 'ssh failed'}"
    return SSHError(kind, text)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("@")]
    line = lines[-1] if lines else ""
    line = line.removeprefix("ssh: ").rstrip(".")
    return line if len(line) <= _MAX_QUOTED else line[: _MAX_QUOTED - 1] + "…"
