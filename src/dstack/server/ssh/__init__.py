"""The server's SSH layer (see pool.py): one multiplexed OpenSSH connection per host, host keys pinned."""

from dstack.server.ssh.connection import CommandResult, SSHConnection
from dstack.server.ssh.errors import SSHError, SSHErrorKind
from dstack.server.ssh.pool import SSHPool
from dstack.server.ssh.target import SSHTarget

__all__ = ["CommandResult", "SSHConnection", "SSHError", "SSHErrorKind", "SSHPool", "SSHTarget"]
