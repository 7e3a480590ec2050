"""The warm command process: the CLI's modules imported once, and a forked copy per command.

Started in the background by a command that found none (dstack.cli.warm_client), in its own session,
with the environment that shapes an interpreter and nothing else. It listens on a Unix socket under
~/.dstack/cli (0700, the socket 0600) and serves only its own user (SO_PEERCRED). For each command:

- it checks that its own code is still what is installed (every dstack module it loaded, by size and
  mtime); if not, it declines, and ends: the command runs cold and starts a fresh warm process;
- it says it accepts, and only then does the CLI send its descriptors (a CLI that gave up waiting, the
  warm process being stopped or swamped, runs the command itself, and nothing of it is held here);
- it forks; the copy takes the command's stdin, stdout, stderr, working folder, umask, arguments and
  environment, gets a process group of its own (the CLI forwards signals to it), and runs the command
  as `dstack` would have;
- it tells the CLI how the copy ended (exit code or signal). If the CLI goes away first (killed), the
  copy is killed: a command never outlives the process the user started.

It ends when idle for IDLE_EXIT seconds, when another process took its socket's path, or when its
install changed. A lock file next to the socket keeps it one per path.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from dstack.cli.warm_client import PROTOCOL

IDLE_EXIT = 900.0  # seconds without a command
CHECK_EVERY = 5.0  # seconds between looks at the socket's path
RECEIVE_TIMEOUT = 2.0  # seconds a connected CLI has to send its command
MAX_REQUEST = 16 * 1024 * 1024
# Imported here so that no command imports them: what `run`, `ps`, `logs`, `attach` and `stop` use.
PRELOAD = (
    "dstack.api.client",
    "dstack.api.stream",
    "dstack.cli.connection",
    "dstack.cli.follow",
    "dstack.cli.output",
    "dstack.cli.requirements",
    "dstack.cli.run_flow",
    "dstack.cli.runspec",
    "dstack.code",
    "dstack.code.snapshot",
    "dstack.config.env",
    "dstack.config.interpolation",
    "dstack.config.names",
    "dstack.config.shell_context",
    "dstack.core.frames",
    "dstack.core.statuses",
)


def serve(path: str) -> None:
    from dstack.core.private import make_process_private

    make_process_private()
    os.chdir("/")  # hold no user folder open for 15 minutes (each copy goes to its command's folder)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another warm process serves this path
    parsers = _preload()
    stamps = _stamps()
    gc.freeze()  # what is loaded stays shared with every copy instead of being touched by its collector
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    inode = os.stat(path).st_ino
    Server(listener, path, inode, lock, stamps, parsers).loop()


class Server:
    def __init__(
        self,
        listener: socket.socket,
        path: str,
        inode: int,
        lock: int,
        stamps: list[tuple[str, int, int]],
        parsers: dict[str | None, Any],
    ) -> None:
        self.listener = listener
        self.path = path
        self.inode = inode
        self.lock = lock
        self.stamps = stamps
        self.parsers = parsers
        self.children: dict[int, socket.socket | None] = {}  # pid: the CLI's connection
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda number, frame: None)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        self.last_command = time.monotonic()

    def loop(self) -> None:
        next_check = time.monotonic() + CHECK_EVERY
        while True:
            watched: list[Any] = [self.listener, self.wake_read]
            watched += [conn for conn in self.children.values() if conn is not None]
            ready, _, _ = select.select(watched, [], [], CHECK_EVERY)
            for item in ready:
                if item is self.listener:
                    if not self._accept():
                        return self._leave()
                elif item == self.wake_read:
                    self._reap()
                else:
                    self._client_gone(item)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + CHECK_EVERY
                if not self._path_is_ours():
                    return self._leave(unlink=False)
                if not self.children and now - self.last_command > IDLE_EXIT:
                    return self._leave()

    def _accept(self) -> bool:
        """Serve one command; False when this process must end (its install changed)."""
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return True
        fds: list[int] = []
        try:
            conn.settimeout(RECEIVE_TIMEOUT)
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != os.getuid():
                conn.close()
                return True
            request = _receive_request(conn)
            self.last_command = time.monotonic()
            stale = self._stale()
            if request is None or stale:
                _send(conn, b"R", 0)
                conn.close()
                return not stale
            # Accepted: only now does the CLI send its descriptors, and from then on the command is ours.
            # (A CLI that gave up waiting for this runs the command itself; nothing of it is held here.)
            _send(conn, b"A", 0)
            fds = _receive_descriptors(conn)
        except (OSError, ValueError):
            _close(fds)
            conn.close()
            return True
        if len(fds) != 4:
            _close(fds)
            conn.close()
            return True
        pid = os.fork()
        if pid == 0:
            self._become_command(conn, request, fds)
        _close(fds)
        try:
            os.setpgid(pid, pid)  # also done by the copy: whichever runs first, the CLI can signal it
        except OSError:
            pass
        conn.setblocking(True)
        self.children[pid] = conn
        _send(conn, b"P", pid)
        return True

    def _become_command(self, conn: socket.socket, request: Request, fds: list[int]) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setpgid(0, 0)
            for other in self.children.values():
                if other is not None:
                    other.close()
            self.listener.close()
            conn.close()
            os.close(self.wake_read)
            os.close(self.wake_write)
            os.close(self.lock)
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            os.fchdir(fds[3])
            _close(fds)
            os.umask(request.umask)
            os.environ.clear()
            os.environ.update(request.env)
            sys.argv = request.argv
            _fresh_stdio()
            random = sys.modules.get("random")
            if random is not None:
                random.seed()  # each copy its own sequence (run names), not the warm process's
            from dstack.cli.main import run_warm

            code = run_warm(request.argv[1:], self.parsers)
        except SystemExit as e:
            code = _exit_code(e)
        except BaseException:  # the copy must end here, whatever happened
            import traceback

            traceback.print_exc()
        _finish(code)

    def _reap(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                _send(conn, b"K", os.WTERMSIG(status))
            else:
                _send(conn, b"X", os.waitstatus_to_exitcode(status))
            conn.close()

    def _client_gone(self, conn: socket.socket) -> None:
        """The CLI's connection became readable: it never writes after its command, so it is gone."""
        for pid, known in list(self.children.items()):
            if known is conn:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                conn.close()
                self.children[pid] = None

    def _stale(self) -> bool:
        return self.stamps != _stamps()

    def _path_is_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _leave(self, unlink: bool = True) -> None:
        self.listener.close()
        if unlink and self._path_is_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass


class Request:
    def __init__(self, umask: int, argv: list[str], env: dict[str, str]) -> None:
        self.umask = umask
        self.argv = argv
        self.env = env


def _receive_request(conn: socket.socket) -> Request | None:
    """Read one command's words; None for a request of another protocol."""
    header = _exactly(conn, 8)
    if header is None:
        return None
    size = int.from_bytes(header, "little")
    if size > MAX_REQUEST:
        return None
    body = _exactly(conn, size)
    if body is None:
        return None
    words = body.split(b"\0")
    if len(words) < 3 or words[0] != PROTOCOL:
        return None
    umask = int(words[1], 8) & 0o777
    count = int(words[2])
    argv = [os.fsdecode(word) for word in words[3 : 3 + count]]
    env = {}
    for item in words[3 + count :]:
        name, _, value = item.partition(b"=")
        env[os.fsdecode(name)] = os.fsdecode(value)
    if len(argv) != count or not argv:
        return None
    return Request(umask, argv, env)


def _receive_descriptors(conn: socket.socket) -> list[int]:
    """The command's stdin, stdout, stderr and folder: one byte with SCM_RIGHTS."""
    _, ancillary, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(4 * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += list(struct.unpack(f"{usable // 4}i", payload[:usable]))
    return fds


def _exactly(conn: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _send(conn: socket.socket, tag: bytes, value: int) -> None:
    try:
        conn.sendall(tag + value.to_bytes(4, "little", signed=True))
    except OSError:
        pass  # the CLI is gone; the copy is killed through _client_gone or has ended


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _preload() -> dict[str | None, Any]:
    """Import what commands use, and build each command's parser (the copy parses with its own)."""
    from dstack.cli import main

    parsers: dict[str | None, Any] = {None: main.build_parser(None)}
    for name in main.COMMANDS:
        parsers[name] = main.build_parser(name)
    for module in PRELOAD:
        importlib.import_module(module)
    return parsers


def _stamps() -> list[tuple[str, int, int]]:
    """Size and mtime of the interpreter and of every dstack module loaded: what a change of install
    changes."""
    files = [sys.executable]
    for name, module in list(sys.modules.items()):
        if name == "dstack" or name.startswith("dstack."):
            file = getattr(module, "__file__", None)
            if file:
                files.append(file)
    stamps = []
    for file in sorted(files):
        try:
            status = os.stat(file)
            stamps.append((file, status.st_size, status.st_mtime_ns))
        except OSError:
            stamps.append((file, -1, -1))
    return stamps


def _fresh_stdio() -> None:
    """The copy's sys.stdin/stdout/stderr over the command's descriptors, configured as the
    interpreter configures them at start (line-buffered on a terminal, stderr always)."""
    streams = []
    for fd, old in ((0, sys.stdin), (1, sys.stdout), (2, sys.stderr)):
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = getattr(old, "errors", None) or "strict"
        write_through = bool(getattr(old, "write_through", False))
        stream = open(  # noqa: SIM115 - the copy's standard streams, open until it ends
            fd, "r" if fd == 0 else "w", encoding=encoding, errors=errors, closefd=False, newline=None
        )
        if fd:
            stream.reconfigure(line_buffering=fd == 2 or os.isatty(fd), write_through=write_through)
        streams.append(stream)
    sys.stdin, sys.stdout, sys.stderr = streams
    # What the interpreter's own last-resort messages and `_columns()` in main.py look at.
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    sys.stderr.write(f"{e.code}\n")
    return 1


def _finish(code: int) -> None:
    """End the copy as the interpreter ends a process (threads joined, exit handlers run, streams
    flushed), without freeing every module on the way out."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: S110 - as at an interpreter's exit: a failing handler ends nothing
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout and code == 0:
                code = 120  # what the interpreter exits with when stdout cannot be flushed
    os._exit(code & 0xFF if code >= 0 else 1)
