"""The CLI's side of the warm command process: hand this command to it, or say it is not there.

Every `dstack` command is a new Python process that spends most of its life before the first request
importing modules (about 30 ms of a 70-150 ms `dstack run` on a 2-core machine). The warm process
(dstack.cli.warm_server) has imported them already; it forks a copy of itself per command, which takes
this process's stdin, stdout and stderr (passed over a Unix socket, SCM_RIGHTS), its working folder,
umask, arguments and environment, and runs the command exactly as this process would have. This process
stays the command the user sees: it forwards every signal the terminal or a caller sends (Ctrl+C,
Ctrl+Z, a resize, SIGTERM) to the copy, and ends as the copy ends, with its exit code, or by its signal.

When no warm process answers (none started yet, an older dstack's, a changed install), the command
runs here as always, and main() starts a warm process for the next one. It is opt-in for now
(DSTACK_CLI_WARM=1): under load, one retention test (test_retention's client-reads case) failed with it
and passed without it, for a reason not yet found.

This module runs first in every command: it imports nothing beyond the interpreter's built-in modules.
"""

from __future__ import annotations

import _socket
import os
import sys

# Set by run() when no warm process answered at this path: main() starts one there after the command.
missing: str | None = None

PROTOCOL = b"dstack-warm-1"
RECORD = 5  # replies: one tag byte and a 4-byte signed integer
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2", "SIGTSTP")
# The environment that shapes an interpreter as it starts (its paths, its stdio's encoding and
# buffering): a warm process serves only commands whose values match those it started with.
SHAPING_PREFIXES = ("PYTHON", "LC_")
SHAPING_NAMES = ("LANG",)
MAX_SOCKET_PATH = 107  # sun_path's 108 bytes, NUL included
# A warm process that does not accept the command within this long (stopped, swamped) is passed by:
# the command runs here. Its descriptors travel only once it has accepted, so it never runs twice.
ACCEPT_TIMEOUT = 3.0


def enabled(argv: list[str]) -> bool:
    # The foreground server is a long-lived service of its own, not a command to fork from here.
    return os.environ.get("DSTACK_CLI_WARM") == "1" and argv[1:2] != ["server"]


def socket_path() -> str | None:
    """Where this user's warm process for this HOME, install and interpreter listens; None where it
    cannot (no HOME, or a path too long for a Unix socket)."""
    home = os.environ.get("HOME")
    if not home:
        return None
    shaping = sorted(
        f"{name}={value}"
        for name, value in os.environ.items()
        if name.startswith(SHAPING_PREFIXES) or name in SHAPING_NAMES
    )
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    key = _fnv1a64("\0".join([sys.executable, package, *shaping]).encode("utf-8", "surrogateescape"))
    path = f"{home}/.dstack/cli/warm-{key:016x}.sock"
    return path if len(path.encode("utf-8", "surrogateescape")) <= MAX_SOCKET_PATH else None


def shaping_environment() -> dict[str, str]:
    """What a warm process started from here inherits: the shaping variables, HOME and PATH."""
    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith(SHAPING_PREFIXES) or name in SHAPING_NAMES or name in ("HOME", "PATH")
    }


def _fnv1a64(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def run(argv: list[str]) -> int | None:
    """Run the command in the warm process; its exit code, or None when it must run here."""
    global missing
    if not enabled(argv):
        return None
    path = socket_path()
    if path is None:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(ACCEPT_TIMEOUT)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        missing = path
        return None
    forwarding = _Forwarding()
    try:
        child = _hand_over(sock, argv)
    except OSError:
        child = None  # it did not accept in time (or at all): nothing of the command is there
    except _Lost:
        forwarding.undo()
        os.write(2, b"dstack: the warm command process ended before the command; run it again\n")
        return 1
    if child is None:
        forwarding.undo()
        sock.close()
        missing = path
        return None
    forwarding.to(child)
    while True:
        try:
            reply = _record(sock)
        except OSError:
            reply = None
        if reply is None:
            os.write(2, b"dstack: the warm command process went away during the command\n")
            return 1
        tag, value = reply
        if tag == b"X"[0]:
            return value
        if tag == b"K"[0]:  # the copy was killed by a signal: so is this process
            import _signal  # type: ignore[import-not-found]  # signal.py would import enum (~3 ms)

            _signal.signal(value, _signal.SIG_DFL)
            os.kill(os.getpid(), value)
            return 128 + value


class _Forwarding:
    """Signals sent to this process go to the warm copy's process group; those that arrive before the
    copy exists wait for it (or, when the command runs here after all, are delivered here)."""

    def __init__(self) -> None:
        import _signal

        self.child: int | None = None
        self.pending: list[int] = []
        self.previous = {number: _signal.signal(number, self._on_signal) for number in _numbers()}

    def to(self, child: int) -> None:
        self.child = child
        for number in self.pending:
            self._on_signal(number, None)
        self.pending.clear()

    def undo(self) -> None:
        import _signal

        for number, handler in self.previous.items():
            _signal.signal(number, handler)
        for number in self.pending:
            os.kill(os.getpid(), number)

    def _on_signal(self, number: int, frame: object) -> None:
        import _signal

        if self.child is None:
            self.pending.append(number)
            return
        try:
            if number == _signal.SIGTSTP:
                # The copy lives in a session without a terminal, where the kernel drops SIGTSTP: stop
                # it outright, stop here as Ctrl+Z asks, and wake it when the shell wakes this process.
                os.killpg(self.child, _signal.SIGSTOP)
                _signal.signal(_signal.SIGTSTP, _signal.SIG_DFL)
                os.kill(os.getpid(), _signal.SIGTSTP)
                _signal.signal(_signal.SIGTSTP, self._on_signal)
                os.killpg(self.child, _signal.SIGCONT)
            else:
                os.killpg(self.child, number)
        except ProcessLookupError:
            pass  # it has just ended; its status is on the way


def _numbers() -> list[int]:
    import _signal

    return [getattr(_signal, name) for name in FORWARDED]


def _hand_over(sock: _socket.socket, argv: list[str]) -> int | None:
    """Send the command; the warm copy's pid, or None when the warm process declined it."""
    # The peer must be this user's: anything else must not see this environment or these descriptors.
    credentials = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    if int.from_bytes(credentials[4:8], sys.byteorder) != os.getuid():
        return None
    umask = os.umask(0o077)
    os.umask(umask)
    words = [PROTOCOL, b"%o" % umask, b"%d" % len(argv)]
    words += [os.fsencode(word) for word in argv]
    words += [os.fsencode(name) + b"=" + os.fsencode(value) for name, value in os.environ.items()]
    payload = b"\0".join(words)
    sock.sendall(len(payload).to_bytes(8, "little") + payload)
    reply = _record(sock)
    if reply is None or reply[0] != b"A"[0]:
        return None  # declined (a changed install), or another protocol
    # Accepted: from here on the command is the warm process's, however long it takes to answer.
    sock.settimeout(None)
    # The working folder travels as a descriptor: exact even when renamed or deleted meanwhile.
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2, here))
        sock.sendmsg([b"F"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])  # (fails: none travelled)
    finally:
        os.close(here)
    try:
        reply = _record(sock)
    except OSError as e:
        raise _Lost from e
    if reply is None or reply[0] != b"P"[0]:
        raise _Lost
    return reply[1]


class _Lost(Exception):
    """The warm process took the command and went away before starting it."""


def _record(sock: _socket.socket) -> tuple[int, int] | None:
    data = b""
    while len(data) < RECORD:
        chunk = sock.recv(RECORD - len(data))
        if not chunk:
            return None
        data += chunk
    return data[0], int.from_bytes(data[1:], "little", signed=True)
