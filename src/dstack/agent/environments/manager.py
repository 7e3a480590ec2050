"""Choosing and preparing a job's environment (SPEC §5): a Python venv, or a container image; and the build.

`prepare` returns a `TaskEnvironment`: what to run the commands in, and possibly a `PendingBuild` that the
runner must run first (its commands, in that environment, through the job's driver). The runner then
calls `build_succeeded` (the result is cached: the venv kept, or the container committed) or
`build_failed`, and `close` when the job is over.

Build policies: `use-build` takes the cached build or refuses (`build_not_found`, before anything runs);
`build` takes the cached build or builds; `force-build` always builds. One build per key at a time: a run
that waits for another's build of the same key then uses its result.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from dstack.agent.drivers.docker import DockerDriver
from dstack.agent.drivers.dockerapi import DockerClient, DockerError, docker_socket
from dstack.agent.environments import pythons
from dstack.agent.environments.buildkey import build_key, key_of
from dstack.agent.environments.builds import VENV_DIR, BuildCancelled, BuildStore
from dstack.agent.environments.clones import seal
from dstack.agent.environments.images import ImageError, Images, PullCancelled
from dstack.agent.environments.tools import ToolError
from dstack.agent.environments.venvs import RunVenvs, Templates, Venv, VenvFactory
from dstack.agent.jobs.spec import JobSpec
from dstack.agent.reaper import ChildProcesses

log = logging.getLogger(__name__)

BUILD_NOT_FOUND = "build_not_found"
BUILD_FAILED = "build_failed"
ENVIRONMENT_FAILED = "environment_failed"
_KEY_SHOWN = 12


class SetupError(Exception):
    """The environment cannot be prepared; the message is one sentence, `code` a stable reason code."""

    def __init__(self, message: str, code: str = ENVIRONMENT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class SetupCancelled(Exception):
    """The job was stopped while its environment was being prepared."""


@dataclass
class PendingBuild:
    key: str
    description: str  # "Python 3.12" / "image busybox"
    # The first line of the build's output. Not a status message as well: the CLI would show it twice.
    announcement: str
    folder: Optional[Path] = None  # python: the new build's folder
    job_id: str = ""  # python: whose copy of the build the commands then run in
    base_image: Optional[Dict[str, Any]] = None  # docker: the base image's inspect data


@dataclass
class TaskEnvironment:
    venv: Optional[Venv] = None
    image: Optional[str] = None  # the image the commands run in (a built one after a build)
    # A line for the job's output before the commands' own: which build they run in. In the output, not
    # only in the run's status, so that `dstack run` and `dstack logs` show it however fast the task is.
    note: Optional[str] = None
    build: Optional[PendingBuild] = None
    _unlock: Optional[Callable[[], None]] = None  # releases the build key's lock
    _releases: List[Callable[[], None]] = field(default_factory=list)  # lets go of the build it uses

    @property
    def in_container(self) -> bool:
        return self.image is not None

    def unlock(self) -> None:
        unlock, self._unlock = self._unlock, None
        if unlock is not None:
            unlock()

    def close(self) -> None:
        self.unlock()
        while self._releases:
            self._releases.pop()()


class EnvironmentManager:
    def __init__(self, root: Path, children: ChildProcesses, tool_env: Mapping[str, str]) -> None:
        self.children = children
        self._factory = VenvFactory(children, tool_env)
        self._templates = Templates(root / "python", self._factory)
        self._runs = RunVenvs(root / "runs")
        self._builds = BuildStore(root / "builds")
        self._docker: Optional[DockerDriver] = None
        self._docker_lock = threading.Lock()

    def collect_garbage(self) -> None:
        """Call when no job runs: what cut-short builds and runs left goes."""
        self._builds.collect_garbage()
        self._runs.collect_garbage()

    def find_build(
        self, python: Optional[str], image: Optional[str], inputs: Dict[str, Any]
    ) -> Optional[str]:
        """The key of this host's cached build for these inputs (see buildkey.build_inputs), if it has one.

        For a plan: it looks, it never installs a Python or pulls an image (without them, no cached build).
        """
        if image is not None:
            try:
                client = self.docker().client
                info = client.inspect_image(image)
                if info is None:
                    return None
                key = key_of(["image", str(info.get("Id"))], inputs)
                return key if Images(client).cached_build(key) is not None else None
            except (SetupError, ImageError, DockerError):
                return None
        if python is None:
            return None
        interpreter = pythons.find_interpreters().get(python)
        if interpreter is None:
            return None
        key = key_of(["python", python, os.path.realpath(interpreter)], inputs)
        return key if self._builds.lookup(key) is not None else None

    def docker(self) -> DockerDriver:
        """The container driver; raises SetupError if this host has no Docker daemon that answers."""
        with self._docker_lock:
            if self._docker is None:
                path = docker_socket()
                if path is None:
                    raise SetupError("Docker is not available on this host: DOCKER_HOST is not a unix socket")
                client = DockerClient(path)
                try:
                    client.version(timeout=5.0)
                except DockerError as e:
                    raise SetupError(f"Docker is not available on this host: {e}") from e
                self._docker = DockerDriver(client)
            return self._docker

    def prepare(
        self,
        spec: JobSpec,
        cwd: Path,
        code_dir: Path,
        notify: Callable[[str], object],
        cancelled: Callable[[], bool],
    ) -> TaskEnvironment:
        try:
            if spec.image is not None:
                return self._prepare_image(spec, spec.image, cwd, code_dir, notify, cancelled)
            if spec.python is not None:
                return self._prepare_python(spec, spec.python, cwd, code_dir, notify, cancelled)
        except ToolError as e:
            raise SetupError(str(e)) from e
        except ImageError as e:
            raise SetupError(str(e)) from e
        except (BuildCancelled, PullCancelled) as e:
            raise SetupCancelled() from e
        return TaskEnvironment()

    # -- python ------------------------------------------------------------------------------------------

    def _prepare_python(
        self,
        spec: JobSpec,
        version: str,
        cwd: Path,
        code_dir: Path,
        notify: Callable[[str], object],
        cancelled: Callable[[], bool],
    ) -> TaskEnvironment:
        if not spec.build:
            template = self._templates.get(version, notify)
            return self._own_copy(TaskEnvironment(), spec.id, template, shared_packages=True)
        interpreter = self._factory.interpreter(version, notify)
        key = _build_key(spec, ["python", version, os.path.realpath(interpreter)], cwd, code_dir)
        env = TaskEnvironment(_unlock=self._lock(key, cancelled))
        try:
            cached = None if spec.build_policy == "force-build" else self._builds.lookup(key)
            if cached is not None:
                self._builds.acquire(cached)
                try:  # held only while it is copied: the copy's files outlive the build's folder
                    self._own_copy(env, spec.id, Venv(cached / VENV_DIR, version, interpreter))
                finally:
                    self._builds.release(cached)
                built_at = self._builds.info(cached).get("built_at")
                env.note = _cached_note(key, float(built_at) if isinstance(built_at, (int, float)) else None)
                env.unlock()
                return env
            _refuse_without_build(spec)
            announcement = _announcement(f"Python {version}", key)
            folder = self._builds.new_build(key)
            env._releases.append(lambda: self._builds.release(folder))
            env.venv = self._factory.create(folder / VENV_DIR, version, interpreter)
            env.build = PendingBuild(
                key=key,
                description=f"Python {version}",
                announcement=announcement,
                folder=folder,
                job_id=spec.id,
            )
            return env
        except BaseException:
            env.close()
            raise

    # -- images ------------------------------------------------------------------------------------------

    def _prepare_image(
        self,
        spec: JobSpec,
        image: str,
        cwd: Path,
        code_dir: Path,
        notify: Callable[[str], object],
        cancelled: Callable[[], bool],
    ) -> TaskEnvironment:
        images = Images(self.docker().client)
        auth = spec.registry_auth
        credentials = None if auth is None else {"username": auth.username or "", "password": auth.password}
        info = images.ensure(image, notify, cancelled, credentials)
        if not spec.build:
            return TaskEnvironment(image=str(info.get("Id") or image))
        key = _build_key(spec, ["image", str(info.get("Id"))], cwd, code_dir)
        env = TaskEnvironment(_unlock=self._lock(key, cancelled))
        try:
            cached = None if spec.build_policy == "force-build" else images.cached_build(key)
            if cached is not None:
                env.image = str(cached.get("Id"))
                env.note = _cached_note(key, _docker_time(cached.get("Created")))
                env.unlock()
                return env
            _refuse_without_build(spec)
            announcement = _announcement(f"image {image}", key)
            env.image = str(info.get("Id") or image)
            env.build = PendingBuild(
                key=key, description=f"image {image}", announcement=announcement, base_image=info
            )
            return env
        except BaseException:
            env.close()
            raise

    # -- after the build ---------------------------------------------------------------------------------

    def build_succeeded(self, env: TaskEnvironment, container_id: Optional[str]) -> None:
        """Cache the build's result and switch `env` to it; releases the key's lock."""
        build = env.build
        assert build is not None
        try:
            if build.folder is not None and env.venv is not None:
                seal(build.folder / VENV_DIR)  # cached from now on: read-only, and only ever copied
                self._builds.publish(build.key, build.folder, {"description": build.description})
                self._own_copy(env, build.job_id, env.venv)  # what the run then does stays in its copy
            elif build.base_image is not None and container_id is not None:
                images = Images(self.docker().client)
                reference = images.commit_build(container_id, build.key, build.base_image)
                committed = images.cached_build(build.key)
                env.image = str((committed or {}).get("Id") or reference)
        except (ImageError, OSError, ToolError) as e:
            raise SetupError(f"The build succeeded but its result could not be saved: {e}") from e
        finally:
            env.build = None
            env.unlock()
        env.note = f"Build {build.key[:_KEY_SHOWN]} is cached for later runs"

    def _own_copy(
        self, env: TaskEnvironment, job_id: str, source: Venv, shared_packages: bool = False
    ) -> TaskEnvironment:
        """Give the run a venv of its own, copied from `source` (or one a run of it left unchanged), let go
        when the run is over. A template's packages are shared (see clones.py); a build's are copied, so
        that a run may remove or replace them."""
        env.venv = self._runs.make(job_id, source, shared_packages)
        env._releases.append(lambda: self._runs.release(job_id))
        return env

    def build_failed(self, env: TaskEnvironment) -> None:
        build = env.build
        env.build = None
        if build is not None and build.folder is not None:
            self._builds.discard(build.folder)
        env.unlock()

    def _lock(self, key: str, cancelled: Callable[[], bool]) -> Callable[[], None]:
        context = self._builds.locked(key, cancelled)
        context.__enter__()

        def unlock() -> None:
            context.__exit__(None, None, None)

        return unlock


def _build_key(spec: JobSpec, base: List[str], cwd: Path, code_dir: Path) -> str:
    # The variables of the job's own that its build commands may refer to: its env and its run name.
    variables = {**spec.env, "DSTACK_RUN_NAME": spec.run_name}
    return build_key(base, spec.working_dir or ".", spec.build, cwd, code_dir, variables, spec.args)


def _refuse_without_build(spec: JobSpec) -> None:
    if spec.build_policy == "use-build":
        raise SetupError(
            "No cached build of this environment on this host; run with --build to build it", BUILD_NOT_FOUND
        )


def _announcement(description: str, key: str) -> str:
    return f"Building the environment ({description}, build {key[:_KEY_SHOWN]})"


def _cached_note(key: str, built_at: Optional[float]) -> str:
    when = time.strftime(" from %Y-%m-%d %H:%M UTC", time.gmtime(built_at)) if built_at else ""
    return f"Using cached build {key[:_KEY_SHOWN]}{when}"


def _docker_time(value: Any) -> Optional[float]:
    if not isinstance(value, str) or len(value) < 19:
        return None
    try:
        return time.mktime(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    except ValueError:
        return None
