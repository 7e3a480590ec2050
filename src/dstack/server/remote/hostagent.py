"""The agent on a remote host, over its SSH connection: look at the host, ship the artifacts, start the
agent (or find the one already running), and hand its jobs over to a newer one.

Everything runs in the host's own python3 (the agent needs Python 3.9+ anyway), one SSH command per step:
- `probe`: Python version, OS and architecture, free disk in the agent's folder, which artifacts are
  there, and the agent that runs (its pid, port and command line, from its agent.json and /proc);
- `start`: starts the agent detached (its own session: it survives the SSH link and the server), with its
  token on stdin (never in an argv or environment a `ps` on the host would show), listening on the host's
  loopback only, and waits until it has written agent.json.
The agent's folder is ~/.dstack/agent of the login user (private: umask 077); its jobs are in work/.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from dstack.server.remote.artifact import Artifact
from dstack.server.ssh import SSHConnection, SSHError, SSHErrorKind

AGENT_DIR = ".dstack/agent"  # relative to the login user's home
WORK_DIR = f"{AGENT_DIR}/work"
MIN_FREE_BYTES = 512 * 1024**2
START_TIMEOUT = 30.0
# An agent no server talks to and that runs no job (its fleet deleted while the host was down) leaves
# after a day; a server that reconnects starts it again.
IDLE_EXIT = 86400
PYTHON_TOO_OLD = 98
NO_PYTHON = 97

# Runs the script in $1 with the first Python 3.9+ on PATH (a script exits PYTHON_TOO_OLD on an older one).
_WITH_PYTHON = f"""\
script=$1; shift
for p in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python3.9; do
  command -v "$p" >/dev/null 2>&1 || continue
  "$p" -c "$script" "$@"; rc=$?
  [ "$rc" = {PYTHON_TOO_OLD} ] || exit "$rc"
done
exit {NO_PYTHON}
"""

_PROBE = f"""\
import json, os, platform, sys
if sys.version_info < (3, 9):
    sys.exit({PYTHON_TOO_OLD})
base = os.path.join(os.path.expanduser("~"), {AGENT_DIR!r})
info = {{"python": sys.executable, "version": ".".join(map(str, sys.version_info[:3])),
        "os": platform.system().lower(), "arch": platform.machine().lower(), "hostname": platform.node()}}
try:
    folder = base if os.path.isdir(base) else os.path.expanduser("~")
    stat = os.statvfs(folder)
    info["disk_free"] = stat.f_bavail * stat.f_frsize
except OSError:
    info["disk_free"] = None
info["files"] = sorted(os.listdir(base)) if os.path.isdir(base) else []
info["agent"] = None
try:
    with open(os.path.join(base, "work", "agent.json")) as f:
        agent = json.load(f)
    pid = int(agent["pid"])
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        argv = [part.decode("utf-8", "replace") for part in f.read().split(b"\\0") if part]
    info["agent"] = {{"pid": pid, "port": int(agent["port"]), "argv": argv}}
except (OSError, ValueError, KeyError, TypeError):
    pass
print(json.dumps(info))
"""

_START = f"""\
import json, os, subprocess, sys, time
if sys.version_info < (3, 9):
    sys.exit({PYTHON_TOO_OLD})
token = sys.stdin.readline().strip()
zipapp, uv = sys.argv[1], sys.argv[2]
os.umask(0o077)
base = os.path.join(os.path.expanduser("~"), {AGENT_DIR!r})
work = os.path.join(base, "work")
os.makedirs(work, exist_ok=True)
env = dict(os.environ)
if uv:
    env["DSTACK_AGENT_UV"] = os.path.join(base, uv)
log = open(os.path.join(base, "agent.log"), "ab")
agent = subprocess.Popen(
    [sys.executable, os.path.join(base, zipapp), "--work-dir", work, "--host", "127.0.0.1", "--token-stdin",
     "--idle-exit", "{IDLE_EXIT}"],
    stdin=subprocess.PIPE, stdout=log, stderr=log, env=env, start_new_session=True, close_fds=True, cwd=base,
)
agent.stdin.write((token + "\\n").encode())
agent.stdin.close()
deadline = time.monotonic() + {START_TIMEOUT}
while time.monotonic() < deadline:
    if agent.poll() is not None:
        with open(os.path.join(base, "agent.log"), "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
        sys.stderr.write((tail[-1] if tail else "the agent exited with code %d" % agent.returncode) + "\\n")
        sys.exit(3)
    try:
        with open(os.path.join(work, "agent.json")) as f:
            info = json.load(f)
        if info.get("pid") == agent.pid:
            print(json.dumps(info))
            sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.01)
sys.stderr.write("the agent did not start within {START_TIMEOUT:.0f} s\\n")
sys.exit(4)
"""

# Ends an agent: SIGUSR1 (hand the jobs over) or SIGTERM (stop them); one that does not exit in time (hung,
# or stopped with SIGSTOP) is killed, which its jobs outlive.
_END_AGENT = """\
import os, signal, sys, time
pid = int(sys.argv[1])
def gone(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False
try:
    os.kill(pid, signal.SIGUSR1 if sys.argv[2] == "handover" else signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
if not gone(float(sys.argv[3])):
    os.kill(pid, signal.SIGKILL)
    sys.exit(0 if gone(10) else 5)
"""


@dataclass
class Probe:
    python: str
    version: str
    os: str
    arch: str
    hostname: str
    disk_free: int | None
    files: list[str] = field(default_factory=list)
    agent: dict[str, Any] | None = None

    def runs(self, artifact: Artifact) -> bool:
        """True if the running agent is this artifact (the same code)."""
        return self.agent is not None and any(artifact.name in word for word in self.agent["argv"])


async def _python(
    connection: SSHConnection, script: str, *args: str, input: bytes | None = None, timeout: float = 60.0
) -> Any:
    result = await connection.run(
        ["sh", "-c", _WITH_PYTHON, "sh", script, *args], input=input, timeout=timeout
    )
    host = connection.target.hostname
    if result.returncode in (NO_PYTHON, PYTHON_TOO_OLD):
        raise SSHError(
            SSHErrorKind.COMMAND,
            f"{host} has no Python 3.9 or newer on PATH, which the dstack agent needs; "
            "install python3 (e.g. apt-get install python3) and apply the fleet again",
        )
    return result


async def probe(connection: SSHConnection) -> Probe:
    result = await _python(connection, _PROBE)
    if result.returncode != 0:
        raise SSHError(
            SSHErrorKind.COMMAND,
            f"Cannot look at {connection.target.hostname}: "
            f"{_last_line(result.error_text) or 'the probe failed'}",
        )
    try:
        data = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SSHError(
            SSHErrorKind.COMMAND, f"{connection.target.hostname} answered the probe with something unexpected"
        ) from None
    return Probe(**data)


def check_disk(connection: SSHConnection, found: Probe) -> None:
    if found.disk_free is not None and found.disk_free < MIN_FREE_BYTES:
        raise SSHError(
            SSHErrorKind.COMMAND,
            f"{connection.target.hostname} has only {found.disk_free / 1024**2:.0f} MB free in the home of "
            f"{connection.target.user}, and the dstack agent needs at least {MIN_FREE_BYTES // 1024**2} MB; "
            "free some disk space and apply the fleet again",
        )


async def ship(connection: SSHConnection, found: Probe, artifacts: list[Artifact]) -> None:
    """Upload the artifacts the host lacks (each once: their names are their content's hash)."""
    for artifact in artifacts:
        if artifact.name not in found.files:
            try:
                await connection.upload(
                    artifact.path,
                    f"{AGENT_DIR}/{artifact.name}",
                    mode="700" if artifact.name.startswith("uv-") else "600",
                )
            except SSHError as e:
                if "No space left" in e.message:
                    raise SSHError(
                        SSHErrorKind.COMMAND,
                        f"{connection.target.hostname} ran out of disk space while receiving the dstack "
                        "agent; free some disk space and apply the fleet again",
                    ) from e
                raise
            found.files.append(artifact.name)


async def start(connection: SSHConnection, token: str, agent: Artifact, uv: Artifact | None) -> int:
    """Start the agent; the port it listens on (on the host's loopback)."""
    result = await _python(
        connection,
        _START,
        agent.name,
        uv.name if uv is not None else "",
        input=f"{token}\n".encode(),
        timeout=START_TIMEOUT + 30,
    )
    if result.returncode != 0:
        raise SSHError(
            SSHErrorKind.COMMAND,
            f"The dstack agent did not start on {connection.target.hostname}: "
            f"{_last_line(result.error_text) or 'unknown error'}",
        )
    try:
        return int(json.loads(result.stdout.decode().strip().splitlines()[-1])["port"])
    except (ValueError, KeyError, IndexError):
        raise SSHError(
            SSHErrorKind.COMMAND, f"The dstack agent on {connection.target.hostname} did not say its port"
        ) from None


async def stop(connection: SSHConnection, pid: int, *, handover: bool) -> None:
    """End the agent `pid`: handing its jobs over to the next one (SIGUSR1), or stopping them (SIGTERM).
    One that does not exit in time is killed."""
    mode, patience = ("handover", 5.0) if handover else ("stop", 60.0)
    result = await _python(connection, _END_AGENT, str(pid), mode, str(patience), timeout=patience + 60)
    if result.returncode != 0:
        raise SSHError(
            SSHErrorKind.COMMAND,
            f"The dstack agent on {connection.target.hostname} (pid {pid}) did not exit",
        )


def describe(found: Probe) -> str:
    return f"Python {found.version} ({shlex.quote(found.python)}), {found.os}/{found.arch}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
