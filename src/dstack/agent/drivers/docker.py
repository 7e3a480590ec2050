"""Runs a job in a Docker container, through the Engine API (see dockerapi.py).

The container uses the host's network (the task's ports are on the host's loopback, where the port
forward expects them), has the job's code folder mounted as its working directory, gets the job's env, and
is labelled with the job's marker so that a restarted agent can find and remove it.

Its first process is Docker's init (it reaps zombies and passes signals on) running a small POSIX sh
wrapper, which enters the working directory and runs the commands with the task's `shell` (by
default bash where the image has it, else /bin/sh), or the `entrypoint` with the commands as its
arguments. On a stop the wrapper sends SIGTERM to every process of the container (as the process driver
does to the job's process tree); Docker kills whatever is left once the grace is over. With neither
commands nor entrypoint the image's own entrypoint and command run instead.

Everything the user wrote reaches the wrapper as data: positional arguments and a sourced file of `export`
lines quoted with shlex; nothing is evaluated. `files` with targets outside the working directory are
copied into the container before it starts (container_files.py).

Output: the wrapper sends the container's stdout and stderr into the job's output file, mounted into the
container, so the container needs nothing from the agent while it runs (as a process job). A container
running the image's own command has no wrapper: its output comes from the daemon's attach stream, and a
restarted agent reads the daemon's log of it from where the file ends. A restarted agent finds a job's
containers by their marker label and adopts the one of its main phase.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from dstack.agent.drivers.base import EXIT_UNKNOWN, PHASE_MAIN, JobHandle, LaunchSpec
from dstack.agent.drivers.container_files import ContainerFilesError, place_files
from dstack.agent.drivers.dockerapi import DockerClient, DockerError
from dstack.agent.logstore import LogStore

log = logging.getLogger(__name__)

LABEL_MARKER = "dstack.job.marker"
LABEL_JOB = "dstack.job.id"
LABEL_PHASE = "dstack.job.phase"
LABEL_OUTPUT = "dstack.job.output"  # "file": the wrapper writes the output file; "stream": the daemon's
SCRIPT_MOUNT = "/.dstack/job.sh"
ENV_MOUNT = "/.dstack/env.sh"
OUTPUT_MOUNT = "/.dstack/output.log"
# `kill -TERM -1` (the one spelling that dash, busybox and bash all take) signals every process the
# wrapper may signal but itself and init: the whole job, however deep its process tree. A `wait` cut short
# by the trap is waited again, so the exit code is the commands' own (127: already collected). The job's
# env comes from a sourced file rather than the container's config, so that a build container committed
# as an image keeps none of it (secrets included).
# Arguments: $1 the working directory ("" keeps the container's), $2 how to run: `exec` (the rest is the
# argv), `shell` ($3 is the shell), or `auto`.
WRAPPER = (
    "exec >>" + OUTPUT_MOUNT + " 2>&1\n"
    "stopping=\n"
    "trap 'stopping=1; kill -TERM -1 2>/dev/null' TERM INT HUP\n"
    ". " + ENV_MOUNT + "\n"
    'home() { case "$1" in \'~\') printf %s "$HOME";; \'~/\'*) printf %s "$HOME/${1#??}";;'
    ' *) printf %s "$1";; esac; }\n'
    'if [ -n "$1" ]; then wd=$(home "$1"); mkdir -p "$wd" && cd "$wd"'
    ' || { echo "dstack: cannot enter the working directory $wd" >&2; exit 125; }; fi\n'
    'export DSTACK_WORKING_DIR="$PWD"\n'
    "mode=$2; shift 2\n"
    # What follows the mode is the argv (exec), or the shell (shell), and then the script's positional
    # parameters: the run's arguments, which `${{ run.args }}` refers to as "$@".
    'if [ "$mode" = exec ]; then "$@" &\n'
    'elif [ "$mode" = shell ]; then shell=$1; shift; "$shell" ' + SCRIPT_MOUNT + ' "$@" &\n'
    "elif command -v bash >/dev/null 2>&1; then bash --noprofile --norc " + SCRIPT_MOUNT + ' "$@" &\n'
    "else /bin/sh " + SCRIPT_MOUNT + ' "$@" &\nfi\n'
    "pid=$!\n"
    'wait "$pid"; code=$?\n'
    'while [ -n "$stopping" ]; do stopping=; wait "$pid"; c=$?; [ "$c" = 127 ] && break; code=$c; done\n'
    'exit "$code"\n'
)
_FRAME_HEADER = struct.Struct(">BxxxL")
_SHELL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WAIT_RETRY_SECONDS = 1.0
_PUMP_DRAIN_SECONDS = 10.0


@dataclass(frozen=True)
class ContainerHandle(JobHandle):
    container_id: str = ""
    exited: threading.Event = field(default_factory=threading.Event)
    result: List[int] = field(default_factory=list)  # the exit code, once known
    stream: Any = None  # the attach socket (or log stream) of a container running the image's command
    pump: Any = None  # the thread moving that stream into the job's output


class DockerDriver:
    def __init__(self, client: DockerClient) -> None:
        self._client = client

    @property
    def client(self) -> DockerClient:
        return self._client

    def start(self, launch: LaunchSpec) -> JobHandle:
        try:
            return self._start(launch)
        except DockerError as e:
            raise OSError(str(e)) from e

    def _start(self, launch: LaunchSpec) -> JobHandle:
        container_id = self._client.create_container(self._config(launch))
        spec = launch.container
        if spec is not None and spec.copies:
            try:
                place_files(self._client, container_id, spec.copies, spec.user)
            except (ContainerFilesError, DockerError) as e:
                self._client.remove_container(container_id)
                raise DockerError(str(e)) from e
        stream: Any = None
        pump = None
        try:
            if _streamed(launch):
                stream, first_bytes = self._client.attach(container_id)
                pump = _start_pump(stream.recv, first_bytes, 0, launch.logs, launch.job_id)
            self._client.start(container_id)
            state = (self._client.inspect_container(container_id) or {}).get("State", {})
        except DockerError:
            self._client.remove_container(container_id)  # ends the stream, which ends the pump
            raise
        return self._watch(
            ContainerHandle(
                pid=int(state.get("Pid") or 0),
                pgid=None,
                marker=launch.marker,
                container_id=container_id,
                stream=stream,
                pump=pump,
            )
        )

    def _watch(self, handle: ContainerHandle) -> ContainerHandle:
        threading.Thread(
            target=self._wait_loop,
            args=(handle,),
            name=f"docker-wait-{handle.container_id[:12]}",
            daemon=True,
        ).start()
        return handle

    def _config(self, launch: LaunchSpec) -> Dict[str, Any]:
        container = launch.container
        if container is None:
            raise DockerError("The job has no container spec")
        resources = launch.resources
        mounts: List[Dict[str, Any]] = [
            {"Type": "bind", "Source": str(container.code_dir), "Target": container.code_mount}
        ]
        for source, target, read_only in container.mounts:
            mounts.append({"Type": "bind", "Source": source, "Target": target, "ReadOnly": read_only})
        env = dict(launch.env)
        # A user of the image's own may run the task: it must be able to read what the wrapper reads (the
        # job's folder stays the agent's own on the host).
        readable = 0o644 if container.user else 0o600
        if not _streamed(launch):
            os.close(launch.logs.writer_fd())  # a bind mount needs the file to exist
            if container.user:  # that user writes the job's output, through the mount (the job's folder
                os.chmod(launch.logs.log_path, 0o666)  # noqa: S103 - stays the agent's own on the host)
            mounts.append({"Type": "bind", "Source": str(launch.logs.log_path), "Target": OUTPUT_MOUNT})
            env_file = launch.script.with_name(launch.script.name + ".env")
            env = write_env_file(env_file, env, mode=readable)
            os.chmod(launch.script, 0o644)
            mounts.append(
                {"Type": "bind", "Source": str(launch.script), "Target": SCRIPT_MOUNT, "ReadOnly": True}
            )
            mounts.append({"Type": "bind", "Source": str(env_file), "Target": ENV_MOUNT, "ReadOnly": True})
        host_config: Dict[str, Any] = {"NetworkMode": "host", "Init": True, "Mounts": mounts}
        if container.privileged:
            host_config["Privileged"] = True
        if resources.cpus:
            host_config["NanoCpus"] = int(resources.cpus * 1e9)
        if resources.memory_bytes:
            host_config["Memory"] = resources.memory_bytes
        if resources.shm_bytes:
            host_config["ShmSize"] = resources.shm_bytes
        if resources.gpus:
            host_config["DeviceRequests"] = [
                {
                    "Driver": "nvidia",
                    "DeviceIDs": [str(index) for index in resources.gpus],
                    "Capabilities": [["gpu"]],
                }
            ]
        workdir = container.workdir
        config: Dict[str, Any] = {
            "Image": container.image,
            "Env": [f"{name}={value}" for name, value in env.items()],
            # A ~/... directory is entered by the wrapper (only it knows the user's home).
            "WorkingDir": workdir if workdir.startswith("/") else "/",
            "Labels": {
                LABEL_MARKER: launch.marker,
                LABEL_JOB: launch.job_id,
                LABEL_PHASE: launch.phase,
                LABEL_OUTPUT: "stream" if _streamed(launch) else "file",
            },
            "AttachStdin": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "OpenStdin": False,
            "HostConfig": host_config,
        }
        if container.user:
            config["User"] = container.user
        if not container.use_image_command:
            config["Entrypoint"] = ["/bin/sh", "-c", WRAPPER]
            entered = "" if workdir.startswith("/") else workdir
            if container.argv:
                config["Cmd"] = ["dstack-job", entered, "exec", *container.argv]
            elif container.shell:
                shell = {"sh": "/bin/sh", "bash": "bash"}.get(container.shell, container.shell)
                config["Cmd"] = ["dstack-job", entered, "shell", shell, *launch.args]
            else:
                config["Cmd"] = ["dstack-job", entered, "auto", *launch.args]
        return config

    def _wait_loop(self, handle: ContainerHandle) -> None:
        code = 1
        while True:
            try:
                code = self._client.wait(handle.container_id)
                break
            except DockerError as e:
                # The daemon restarted or the link broke: the container may still run; ask again.
                info = _safe_inspect(self._client, handle.container_id)
                if info is None or not info.get("State", {}).get("Running"):
                    code = int((info or {}).get("State", {}).get("ExitCode", 1) or 1) if info else 1
                    log.warning("Lost the wait on container %s: %s", handle.container_id[:12], e)
                    break
                time.sleep(_WAIT_RETRY_SECONDS)
        handle.result.append(code)
        handle.exited.set()

    def wait(self, handle: JobHandle, timeout: Optional[float]) -> Optional[int]:
        container = _container(handle)
        if not container.exited.wait(timeout):
            return None
        if container.pump is not None:
            # The daemon ends the stream once the container has exited and its output was sent.
            container.pump.join(_PUMP_DRAIN_SECONDS)
        return container.result[0]

    def stop(self, handle: JobHandle, grace_seconds: float, abort: bool) -> None:
        container = _container(handle)
        try:
            if abort:
                self._client.kill(container.container_id)
            else:
                self._client.stop(container.container_id, grace_seconds)
        except DockerError as e:
            log.warning("Could not stop container %s: %s", container.container_id[:12], e)

    def inspect(self, handle: JobHandle) -> List[int]:
        info = _safe_inspect(self._client, _container(handle).container_id)
        state = (info or {}).get("State", {})
        return [int(state["Pid"])] if state.get("Running") and state.get("Pid") else []

    def release(self, handle: JobHandle) -> None:
        container = _container(handle)
        try:
            self._client.remove_container(container.container_id)
        except DockerError as e:
            log.warning("Could not remove container %s: %s", container.container_id[:12], e)
        _close_quietly(container.stream)

    def adopt(self, marker: str, folder: Path, logs: LogStore) -> Optional[JobHandle]:
        found = self._main_container(marker)
        if found is None or not found.get("State", {}).get("Running"):
            return None
        container_id = str(found["Id"])
        stream = pump = None
        if found.get("Config", {}).get("Labels", {}).get(LABEL_OUTPUT) == "stream":
            try:
                stream = self._client.logs(container_id)
            except DockerError as e:
                log.warning("Cannot read the output of container %s: %s", container_id[:12], e)
            else:
                pump = _start_pump(stream.read1, b"", logs.size(), logs, container_id[:12])
        return self._watch(
            ContainerHandle(
                pid=int(found["State"].get("Pid") or 0),
                pgid=None,
                marker=marker,
                container_id=container_id,
                stream=stream,
                pump=pump,
            )
        )

    def ended(self, marker: str, folder: Path, logs: LogStore) -> Optional[int]:
        found = self._main_container(marker)
        if found is None or found.get("State", {}).get("Running"):
            return None
        if found.get("Config", {}).get("Labels", {}).get(LABEL_OUTPUT) == "stream":
            try:  # what it printed after the earlier agent's last read is only in the daemon's log
                stream = self._client.logs(str(found["Id"]))
                try:
                    _pump(stream.read1, b"", logs.size(), logs)
                finally:
                    _close_quietly(stream)
            except DockerError as e:
                log.warning("Cannot read the output of container %s: %s", str(found["Id"])[:12], e)
        return int(found.get("State", {}).get("ExitCode", EXIT_UNKNOWN))

    def _main_container(self, marker: str) -> Optional[Dict[str, Any]]:
        try:
            for container_id in self._client.list_containers(f"{LABEL_MARKER}={marker}"):
                info = self._client.inspect_container(container_id)
                labels = (info or {}).get("Config", {}).get("Labels") or {}
                if info is not None and labels.get(LABEL_PHASE, PHASE_MAIN) == PHASE_MAIN:
                    return info
        except DockerError as e:
            log.warning("Could not look for the containers of an earlier job: %s", e)
        return None

    def recover(self, marker: str, grace_seconds: float) -> None:
        try:
            containers = self._client.list_containers(f"{LABEL_MARKER}={marker}")
        except DockerError as e:
            log.warning("Could not look for the containers of an earlier job: %s", e)
            return
        for container_id in containers:
            try:
                self._client.stop(container_id, grace_seconds)
                self._client.remove_container(container_id)
            except DockerError as e:
                log.warning("Could not remove container %s: %s", container_id[:12], e)


def _streamed(launch: LaunchSpec) -> bool:
    """True when the daemon carries the output (the image's own command runs, with no wrapper)."""
    return launch.container is not None and launch.container.use_image_command


def write_env_file(path: Path, env: Dict[str, str], mode: int = 0o600) -> Dict[str, str]:
    """Write the exportable variables as sh `export` lines (private to the agent's user by default).

    Returns the rest: names sh cannot export (they can only go in the container's config).
    """
    lines, rest = [], {}
    for name, value in env.items():
        if _SHELL_NAME_RE.match(name):
            lines.append(f"export {name}={shlex.quote(value)}\n")
        else:
            rest[name] = value
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(lines))
        os.fchmod(f.fileno(), mode)
    return rest


def _container(handle: JobHandle) -> ContainerHandle:
    if not isinstance(handle, ContainerHandle):
        raise TypeError("DockerDriver was given a handle it did not create")
    return handle


def _safe_inspect(client: DockerClient, container_id: str) -> Optional[Dict[str, Any]]:
    try:
        return client.inspect_container(container_id)
    except DockerError:
        return None


def _close_quietly(stream: Any) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass


def _start_pump(read: Any, pending: bytes, skip: int, logs: LogStore, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=_pump, args=(read, pending, skip, logs), name=f"docker-out-{name}", daemon=True
    )
    thread.start()
    return thread


def _pump(read: Any, pending: bytes, skip: int, logs: LogStore) -> None:
    """Demultiplex a stream (8-byte frame headers, stdout and stderr) into the job's output, leaving out
    its first `skip` bytes (what an earlier agent already stored)."""
    buffer = bytearray(pending)
    try:
        while True:
            while len(buffer) >= _FRAME_HEADER.size:
                _, size = _FRAME_HEADER.unpack_from(buffer)
                if len(buffer) < _FRAME_HEADER.size + size:
                    break
                payload = bytes(buffer[_FRAME_HEADER.size : _FRAME_HEADER.size + size])
                del buffer[: _FRAME_HEADER.size + size]
                if skip:
                    cut = min(skip, len(payload))
                    payload, skip = payload[cut:], skip - cut
                logs.append(payload, time.time())
            try:
                chunk = read(256 * 1024)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            buffer += chunk
    except OSError as e:
        log.warning("Container output could not be stored: %s", e)
