"""Where an SSH connection goes: address, port, user, key, and an optional jump host."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SSHTarget:
    hostname: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None  # a private key file; None: the SSH client's defaults are not used
    proxy_jump: SSHTarget | None = None
    # How messages name the key (the path the user wrote, where identity_file is the server's copy of it).
    key_name: str | None = field(default=None, compare=False, repr=False)

    @property
    def key_label(self) -> str:
        return self.key_name or self.identity_file or "(no identity file)"

    @property
    def label(self) -> str:
        """How the host is named in messages: user@host, with the port when it is not 22."""
        port = f":{self.port}" if self.port != 22 else ""
        return f"{self.user}@{self.hostname}{port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name in a known_hosts file, as OpenSSH writes it."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def key_path(self) -> Path | None:
        return Path(self.identity_file).expanduser() if self.identity_file else None
