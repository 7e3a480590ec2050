"""One multiplexed SSH connection to a host, through OpenSSH's client and a control master.

Why OpenSSH's client rather than a Python implementation: its crypto and channel code run in C (a port
forward moves hundreds of MB/s where a Python SSH stack moves tens), it is the implementation sshd's
authors test against, and a user's keys and host keys mean exactly what they mean to their own `ssh`.
One master process per host carries everything — commands, uploads, the forward to the agent, tunnels —
so only the first call pays for the handshake.

The master runs detached (`-f`) with its control socket under the server's private runtime folder, so it
outlives a crashed server: the restarted server finds it (`-O check`) and carries on without a new
handshake. Forwards are unix sockets in that folder (mode 0600 in a 0700 folder): no port race, and no
other local user can connect. A master that died (host down: ServerAlive notices within ~15 s) is started
again by the next call, and its forwards are set up again at the same socket paths, so clients holding
a path keep working once the host answers again.

Every value that reaches the remote shell is quoted (shlex): remote commands are argv lists, never
strings a user wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from dstack.server.ssh.errors import SSHError, SSHErrorKind, ssh_error
from dstack.server.ssh.target import SSHTarget

log = logging.getLogger(__name__)

SSH = "ssh"
CONNECT_TIMEOUT = 10  # seconds for the TCP connect and the handshake
ALIVE_INTERVAL = 5  # a silent host is declared gone after ALIVE_INTERVAL * ALIVE_COUNT seconds
ALIVE_COUNT = 3
OPEN_TIMEOUT = 30.0
# AES-GCM first: with AES-NI it moves several times the bytes of the default chacha20 per CPU second.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"


@dataclass
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode(errors="replace").strip()


class SSHConnection:
    def __init__(
        self, target: SSHTarget, runtime_dir: Path, known_hosts: Path, *, jump: SSHConnection | None = None
    ) -> None:
        self.target = target
        self.known_hosts = known_hosts
        self._jump = jump
        digest = hashlib.sha256(repr(target).encode()).hexdigest()[:12]
        self._dir = runtime_dir
        self.control = runtime_dir / f"c-{digest}"
        self._log = runtime_dir / f"c-{digest}.log"
        self._forward_prefix = f"f-{digest}"
        self._forwards: dict[tuple[str, int], Path] = {}
        self._lock = asyncio.Lock()
        self._open = False

    # -- the master --------------------------------------------------------------------------------------

    def options(self, *, pin: bool = False) -> list[str]:
        """The options every ssh invocation for this host shares (master, commands, forwards)."""
        target = self.target
        options = [
            "-F", "/dev/null",  # the user's ~/.ssh/config must not change what the server does
            "-p", str(target.port),
            "-l", target.user,
            "-o", "BatchMode=yes",  # never a password or passphrase prompt
            "-o", "PreferredAuthentications=publickey",
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"StrictHostKeyChecking={'accept-new' if pin else 'yes'}",
            "-o", "HashKnownHosts=no",
            "-o", "CheckHostIP=no",
            "-o", "UpdateHostKeys=no",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
            "-o", f"Ciphers={CIPHERS}",
            "-o", "Compression=no",
            "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no",
            "-o", f"ControlPath={self.control}",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        key = target.key_path()
        if key is not None:
            options += ["-i", str(key)]
        else:
            options += ["-o", "IdentityFile=none"]
        if self._jump is not None:
            # Through the jump host's own master: one handshake there, shared by every host behind it.
            jump = self._jump
            proxy = [SSH, *jump.options(), "-o", "ControlMaster=no", "-W", "%h:%p", jump.target.hostname]
            options += ["-o", "ProxyCommand=" + " ".join(_quote_proxy(word) for word in proxy)]
        return options

    async def open(self, *, pin: bool = False) -> None:
        """Connect (or adopt the master a previous server process left); `pin` accepts and records an
        unknown host key, as `dstack apply` does. Raises SSHError with the one sentence to show."""
        async with self._lock:
            if await self._master_alive():
                self._open = True
                return
            self._open = False
            await self._start_master(pin=pin)
            self._open = True
            forwards, self._forwards = self._forwards, {}
            for (host, port), _ in forwards.items():
                await self._add_forward(host, port)

    async def ensure(self) -> None:
        if not self._open or not await self._master_alive():
            await self.open()

    async def _start_master(self, *, pin: bool) -> None:
        if self._jump is not None:
            await self._jump.ensure()
        key = self.target.key_path()
        if key is not None and not key.is_file():
            raise SSHError(
                SSHErrorKind.KEY_FILE,
                f"The identity file {self.target.key_label} for {self.target.label} does not exist",
            )
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.known_hosts.touch(mode=0o600, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()  # a dead master's socket
        self._log.write_bytes(b"")
        argv = [
            SSH,
            *self.options(pin=pin),
            "-M",
            "-N",
            "-f",  # detach once authenticated: the exit of this process says "ready" (or why not)
            "-E", str(self._log),
            "-o", "ControlPersist=no",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "StreamLocalBindUnlink=yes",
            "-o", "StreamLocalBindMask=0177",
            self.target.hostname,
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl+C of a foreground server must not take the link down
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), OPEN_TIMEOUT)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise SSHError(
                SSHErrorKind.TIMEOUT,
                f"{self.target.label} did not complete the SSH handshake within {OPEN_TIMEOUT:.0f} s",
            ) from None
        if process.returncode != 0:
            text = stderr.decode(errors="replace") + "\n" + self._log.read_text(errors="replace")
            raise ssh_error(self.target, text, self.known_hosts)

    async def _master_alive(self) -> bool:
        if not self.control.exists():
            return False
        result = await self._ssh("-O", "check", timeout=10)
        return result.returncode == 0

    async def close(self) -> None:
        """End the master (running jobs keep running on the host; the agent does not need the link)."""
        async with self._lock:
            self._open = False
            if self.control.exists():
                await self._ssh("-O", "exit", timeout=10)
            for path in self._forwards.values():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # -- commands ----------------------------------------------------------------------------------------

    async def run(
        self,
        argv: list[str],
        *,
        input: bytes | None = None,
        stdin_path: Path | None = None,
        timeout: float = 60.0,
    ) -> CommandResult:
        """Run argv on the host (each word quoted for the remote shell). A failure of SSH itself raises
        SSHError; the command's own failure is in the result's returncode."""
        await self.ensure()
        command = shlex.join(argv)
        result = await self._ssh(
            "-T",
            "-o",
            "ControlMaster=no",
            command=command,
            input=input,
            stdin_path=stdin_path,
            timeout=timeout,
        )
        if result.returncode == 255 and _is_ssh_failure(result.error_text):
            self._open = False
            raise ssh_error(self.target, result.error_text, self.known_hosts)
        return result

    async def upload(self, local: Path, remote: str, *, mode: str = "600", timeout: float = 600.0) -> None:
        """Copy a local file to `remote` (relative paths are under the login user's home), atomically."""
        script = (
            'set -e; umask 077; mkdir -p -- "$(dirname -- "$1")"; t="$1.part.$$"; '
            f'cat > "$t"; chmod {mode} "$t"; mv -f -- "$t" "$1"'
        )
        result = await self.run(["sh", "-c", script, "sh", remote], stdin_path=local, timeout=timeout)
        if result.returncode != 0:
            raise SSHError(
                SSHErrorKind.COMMAND,
                f"Cannot write {remote} on {self.target.hostname}: {result.error_text or 'failed'}",
            )

    # -- forwards ----------------------------------------------------------------------------------------

    async def forward(self, host: str, port: int) -> Path:
        """A local unix socket that reaches host:port as seen from the remote host (e.g. 127.0.0.1 there,
        or a compute node behind a login node). Kept across reconnects at the same path."""
        await self.ensure()
        async with self._lock:
            existing = self._forwards.get((host, port))
            if existing is not None:
                return existing
            return await self._add_forward(host, port)

    async def _add_forward(self, host: str, port: int) -> Path:
        name = hashlib.sha256(f"{host}:{port}".encode()).hexdigest()[:10]
        path = self._dir / f"{self._forward_prefix}-{name}"
        remote = f"[{host}]" if ":" in host else host
        result = await self._ssh("-O", "forward", "-L", f"{path}:{remote}:{port}", timeout=15)
        if result.returncode != 0:
            raise ssh_error(self.target, result.error_text, self.known_hosts)
        self._forwards[(host, port)] = path
        return path

    async def unforward(self, host: str, port: int) -> None:
        """Drop a forward that is no longer needed (a Slurm job's agent that ended, an agent that moved to
        another port): it is not set up again after a reconnect, and its socket goes away."""
        async with self._lock:
            path = self._forwards.pop((host, port), None)
            if path is None:
                return
            remote = f"[{host}]" if ":" in host else host
            if self.control.exists():
                await self._ssh("-O", "cancel", "-L", f"{path}:{remote}:{port}", timeout=15)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def check_forwarding(self, host: str, port: int) -> None:
        """Raise SSHError(FORWARDING) if sshd refuses to open a TCP channel to host:port (AllowTcpForwarding
        no); the forward's socket itself cannot tell a refusal from a closed port."""
        await self.ensure()
        result = await self._ssh("-o", "ControlMaster=no", "-W", f"{host}:{port}", input=b"", timeout=15)
        text = result.error_text
        if result.returncode != 0 and ("prohibited" in text or "forwarding" in text.lower()):
            raise ssh_error(self.target, text, self.known_hosts)

    # -- plumbing ----------------------------------------------------------------------------------------

    async def _ssh(
        self,
        *args: str,
        command: str | None = None,
        input: bytes | None = None,
        stdin_path: Path | None = None,
        timeout: float,
    ) -> CommandResult:
        argv = [SSH, *self.options(), *args, self.target.hostname]
        if command is not None:
            argv += ["--", command]
        stdin_file = stdin_path.open("rb") if stdin_path is not None else None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin_file
                or (asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            try:
                stdout, stderr = await asyncio.wait_for(process.communicate(input), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise SSHError(
                    SSHErrorKind.TIMEOUT,
                    f"A command on {self.target.hostname} did not finish within {timeout:g} s",
                ) from None
        finally:
            if stdin_file is not None:
                stdin_file.close()
        assert process.returncode is not None
        return CommandResult(process.returncode, stdout, stderr)


def _is_ssh_failure(stderr: str) -> bool:
    from dstack.server.ssh.errors import classify

    return (
        classify(stderr) is not SSHErrorKind.OTHER or not stderr or "ssh:" in stderr or "mux_client" in stderr
    )


def _quote_proxy(word: str) -> str:
    # ProxyCommand is run by a shell with %h/%p expanded by ssh: quote everything but those tokens.
    return word if word == "%h:%p" else shlex.quote(word)


def runtime_dir(server_dir: Path) -> Path:
    """A private folder for control and forward sockets, short enough for unix socket paths (~104 bytes:
    OpenSSH adds a 17-character suffix while it creates a control socket)."""
    preferred = server_dir / "ssh" / "run"
    if len(str(preferred)) <= 60:
        path = preferred
    else:
        digest = hashlib.sha256(str(server_dir.resolve()).encode()).hexdigest()[:10]
        path = Path("/tmp") / f"dstack-{os.getuid()}-{digest}"  # noqa: S108 - checked to be ours below
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or (info.st_mode & 0o077) or not path.is_dir() or path.is_symlink():
        raise SSHError(
            SSHErrorKind.OTHER, f"{path} is not a private folder of this user; remove it and retry"
        )
    return path
