"""The `local` backend: this machine, with an agent process the server starts and keeps alive.

The agent is a separate process in its own session, so tasks survive a server restart; a restarted server
finds it again through `agent.json` in the agent's folder and checks its token before trusting it.

An agent that died is started again; one that is alive but does not answer (hung, or stopped with
SIGSTOP) for HUNG_AFTER seconds is killed and replaced, since it holds the work folder's lock and no other
agent could start. Tasks never depend on their agent (see dstack.agent.runner): the new agent takes the
running ones over, so their runs carry on with output, stop and exit status intact.

An agent started from other code (dstack was upgraded or downgraded since) is handed over the same way
(SIGUSR1: it leaves its jobs running and exits; the new one adopts them): an older agent would answer the
new server's requests with 404s. Which code an agent runs is kept in `agent.code` beside `agent.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dstack.agent.logstore import output_path
from dstack.core.private import user_umask, write_private
from dstack.server.backends.agent_client import AgentClient, AgentError
from dstack.server.backends.base import CAP_CONTAINERS, CAP_NVCC, Backend, HostInfo
from dstack.server.remote.artifact import agent_code_id

log = logging.getLogger(__name__)

HOST_NAME = "local"
AGENT_START_TIMEOUT = 20.0
AGENT_IDLE_EXIT = 3600
HUNG_AFTER = 10.0  # seconds an agent that is alive may leave every request unanswered before it is replaced
_KILL_WAIT = 10.0
_HANDOVER_WAIT = 10.0  # seconds an agent told to hand its jobs over may take to exit


class LocalBackend(Backend):
    type = "local"

    def __init__(
        self, agents_dir: Path, *, price: float = 0.0, declared: dict[str, Any] | None = None
    ) -> None:
        self.dir = agents_dir / HOST_NAME
        self.price = price
        self.declared = declared or {}
        self._client: AgentClient | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()
        self._silent_since: float | None = None

    async def start(self) -> None:
        await self._ensure_agent()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def agent(self, host_name: str) -> AgentClient:
        if self._client is None:
            raise AgentError("The local agent is not started")
        return self._client

    def ports_here(self, host_name: str) -> bool:
        return True

    def output_file(self, host_name: str, job_id: str) -> Path | None:
        return output_path(self.dir, job_id)

    async def hosts(self) -> list[HostInfo]:
        # Asked afresh each time (the registry decides how often): Docker started or a disk filled since
        # the last look must show in the next plan.
        try:
            fingerprint = await self.agent(HOST_NAME).host()
        except AgentError:
            # The agent died, or exited after an idle hour with the server away: bring it back, ask again.
            await self._ensure_agent()
            fingerprint = await self.agent(HOST_NAME).host()
        resources = dict(fingerprint)
        resources.update(self.declared)
        # The agent reports the Docker daemon it can reach; without one, image tasks get no offer here.
        capabilities = frozenset({CAP_CONTAINERS} if resources.get("docker") else set()) | frozenset(
            {CAP_NVCC} if resources.get("nvcc") else set()
        )
        return [
            HostInfo(
                backend=self.type,
                name=HOST_NAME,
                resources=resources,
                price=self.price,
                capabilities=capabilities,
            )
        ]

    async def recover(self, host_name: str) -> bool:
        try:
            await self._ensure_agent()
        except AgentError as e:
            log.warning("local agent did not come back: %s", e)
            return False
        return True

    async def _ensure_agent(self) -> None:
        async with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.dir.chmod(0o700)
            token = _read_or_create_token(self.dir / "token")
            running = _running_agent(self.dir)
            if running is not None:
                url, pid = running
                if await _answers(url, token):
                    self._silent_since = None
                    if _code_of(self.dir, pid) == agent_code_id():
                        await self._use(url, token)
                        return
                    log.info("the local agent (pid %d) runs other code: handing its jobs to a new one", pid)
                    await self._end(pid, signal.SIGUSR1, _HANDOVER_WAIT)
                elif _is_agent_of(pid, self.dir):
                    await self._replace_hung(pid)
            url = await self._spawn(token)
            self._silent_since = None
            await self._use(url, token)
            if running is not None:
                self.host_back()  # jobs given up meanwhile may still run: the reconciler looks

    async def _replace_hung(self, pid: int) -> None:
        """The agent lives but answers nothing: after HUNG_AFTER, kill it (its jobs outlive it)."""
        now = time.monotonic()
        if self._silent_since is None:
            self._silent_since = now
        if now - self._silent_since < HUNG_AFTER:
            raise AgentError(f"The local agent (pid {pid}) does not answer")
        log.warning(
            "the local agent (pid %d) has not answered for %.0f s: replacing it; its jobs carry on",
            pid,
            now - self._silent_since,
        )
        await self._end(pid, signal.SIGKILL, 0.0)  # SIGKILL also ends a stopped (SIGSTOP) process

    async def _end(self, pid: int, signum: int, grace: float) -> None:
        """Send `signum` to the agent `pid` and wait for it to exit; after `grace` seconds, kill it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        if await self._exited(pid, grace):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not await self._exited(pid, _KILL_WAIT):
            raise AgentError(f"The local agent (pid {pid}) did not exit, not even when killed")

    async def _exited(self, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if self._process is not None and self._process.pid == pid:
                self._process.poll()  # our child: reap it
            if not _alive(pid):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)

    async def _use(self, url: str, token: str) -> None:
        if self._client is not None and self._client.url == url:
            return
        if self._client is not None:
            await self._client.close()
        self._client = AgentClient(url, token)

    async def _spawn(self, token: str) -> str:
        info_file = self.dir / "agent.json"
        info_file.unlink(missing_ok=True)
        self._process = await asyncio.to_thread(_start_agent_process, self.dir, token)
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AgentError(
                    f"The local agent exited at start with code {self._process.returncode}; "
                    f"see {self.dir / 'agent.log'}"
                )
            running = _running_agent(self.dir)
            if running is not None and await _answers(running[0], token):
                _write_code(self.dir, running[1])
                return running[0]
            await asyncio.sleep(0.02)
        raise AgentError(
            f"The local agent did not start within {AGENT_START_TIMEOUT:.0f} s; see {self.dir / 'agent.log'}"
        )


def agent_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the agent starts with: the server's, without dstack's own settings.

    Those are the server's (its admin token, its database URL with a password, its folders): the agent
    needs none of them, and what the agent has, its jobs' processes could read in /proc. The agent's
    token travels on its standard input instead.
    """
    return {name: value for name, value in environ.items() if not name.startswith("DSTACK_")}


def _start_agent_process(agent_dir: Path, token: str) -> subprocess.Popen[bytes]:
    env = agent_environment(os.environ)
    with (agent_dir / "agent.log").open("ab") as log_file:
        process = subprocess.Popen(
            # An agent left alone (no job, no server asking) for an hour exits; the server starts it again.
            [
                sys.executable,
                "-m",
                "dstack.agent",
                "--work-dir",
                str(agent_dir),
                "--host",
                "127.0.0.1",
                "--idle-exit",
                str(AGENT_IDLE_EXIT),
                "--token-stdin",
                # The user's own umask for their tasks' files; the agent keeps its own files private.
                "--job-umask",
                f"{user_umask():03o}",
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # tasks must outlive the server, so the agent must too
            close_fds=True,
        )
    assert process.stdin is not None
    try:
        process.stdin.write(token.encode() + b"\n")
        process.stdin.close()  # the agent's stdin is at EOF from now on, as /dev/null was
    except OSError:
        pass  # it died at once; the caller sees it exit and says so
    return process


def _read_or_create_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return token


def _running_agent(agent_dir: Path) -> tuple[str, int] | None:
    """(url, pid) of the agent agent.json names, if that process is alive."""
    try:
        info = json.loads((agent_dir / "agent.json").read_text())
        pid = int(info["pid"])
        if not _alive(pid):
            return None
        return f"http://{info['host']}:{int(info['port'])}", pid
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _code_of(agent_dir: Path, pid: int) -> str | None:
    """The code id of the agent `pid`, as recorded when this backend started it (None: unknown)."""
    try:
        info = json.loads((agent_dir / "agent.code").read_text())
        return str(info["code_id"]) if int(info["pid"]) == pid else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_code(agent_dir: Path, pid: int) -> None:
    write_private(agent_dir / "agent.code", {"pid": pid, "code_id": agent_code_id()})


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _is_agent_of(pid: int, agent_dir: Path) -> bool:
    """True if `pid` is an agent working in `agent_dir` (not a process that took over its pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"dstack.agent" in argv and os.fsencode(str(agent_dir)) in argv


async def _answers(url: str, token: str) -> bool:
    """True if an agent at `url` answers and accepts our token (so it is ours, not a stranger's)."""
    client = AgentClient(url, token, timeout=2.0)
    try:
        await client.host()
        return True
    except AgentError:
        return False
    finally:
        await client.close()
