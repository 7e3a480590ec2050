"""A job's files on the host before its commands start: the code, a cloned repo, `files` and volumes.

- The code is built from the code store at `code_path` in the job's code folder (the container's /workflow).
- `repo` is cloned with git on the host: into the code folder for a relative path, or into a folder of its
  own that a container sees at an absolute path; `if_exists` decides about a path that is not empty.
- Each `files` entry is built from the code store too (the same checks, unpack.py) in the job's folder;
  a relative target is then copied under the working directory, while an absolute or `~/...` one is
  copied into the container before it starts (drivers/container_files.py: only the container knows its
  user's home).
- A volume (`/host:/path`) is a bind mount for a container; a task without image sees the host folder at
  its own path and through a symlink `./path` in its working directory (the documented equivalent: a
  process cannot have `/path` without changing the host).

Paths and URLs reach git as argv items after `--`, never through a shell.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Tuple

from dstack.agent.environments.tools import last_line, run_tool
from dstack.agent.fsutil import is_inside
from dstack.agent.jobs.spec import FilePlacement, JobSpec, RepoClone
from dstack.agent.reaper import ChildProcesses
from dstack.agent.unpack import UnpackError

if TYPE_CHECKING:
    from dstack.agent.codestore import CodeStore

FILES_DIR = "files"
REPO_DIR = "repo"
# A multi-node run's MPI hostfile: in the job's folder, and at this path in a container.
HOSTFILE_NAME = "mpi_hostfile"
HOSTFILE_MOUNT = "/dstack/mpi/hostfile"
CLONE_TIMEOUT_SECONDS = 1800.0
# git may use only these transports: never `ext::` (it runs commands) or another remote helper.
_GIT_SAFE = ["-c", "protocol.allow=never"] + [
    option
    for name in ("https", "http", "ssh", "git", "file")
    for option in ("-c", f"protocol.{name}.allow=always")
]


class WorkspaceError(Exception):
    """The job's files cannot be laid out; the message is one sentence (the job's reason)."""


@dataclass
class Workspace:
    cwd: Path
    # For a container: (host path, container path, read-only) bind mounts beyond the code folder.
    mounts: List[Tuple[str, str, bool]] = field(default_factory=list)
    # For a container: (kind, host path, target) copies to make into it before it starts.
    copies: List[Tuple[str, str, str]] = field(default_factory=list)


def git_argv(*args: str) -> List[str]:
    return ["git", *_GIT_SAFE, *args]


class WorkspaceBuilder:
    def __init__(self, children: ChildProcesses, code_store: CodeStore, tool_env: Dict[str, str]) -> None:
        self._children = children
        self._store = code_store
        self._tool_env = tool_env

    def build(
        self,
        spec: JobSpec,
        folder: Path,
        code_dir: Path,
        announce: Callable[[str], None],
        cancelled: Callable[[], bool],
        notify: Callable[[str], object] = lambda message: None,
    ) -> Workspace:
        """`announce` writes a line into the job's output, `notify` sets its status message."""
        in_container = spec.image is not None
        shutil.rmtree(code_dir, ignore_errors=True)
        target = None if spec.code_hash is None else self._inside(code_dir, spec.code_path, "the code's path")
        # Code unpacked at the folder's root gets its folder from the store (most often a spare moved
        # there whole): making one here first would only be one more folder to make and remove.
        if target != code_dir:
            code_dir.mkdir()
        mounts: List[Tuple[str, str, bool]] = []
        if spec.code_hash is not None and target is not None:
            if target != code_dir:
                target.mkdir(parents=True, exist_ok=True)
            self._unpack(spec.code_hash, target, cancelled, "the code", spare=True)
        if spec.repo is not None:
            mounts += self._clone(spec.repo, folder, code_dir, in_container, announce, notify)
        cwd = code_dir / spec.working_dir if spec.working_dir else code_dir
        try:
            cwd.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorkspaceError(
                f"Could not create the working directory {spec.working_dir}: {e.strerror}"
            ) from e
        # The code's own symlinks could bend the path; they are checked on unpack, and this makes sure.
        if not is_inside(cwd, code_dir):
            raise WorkspaceError(f"The working directory {spec.working_dir} leads outside the code folder")
        workspace = Workspace(cwd=cwd, mounts=mounts)
        self._place_files(spec, folder, code_dir, workspace, cancelled)
        self._volumes(spec, code_dir, workspace)
        if spec.mpi_hostfile is not None:
            hostfile = folder / HOSTFILE_NAME
            hostfile.write_text(spec.mpi_hostfile, encoding="utf-8")
            hostfile.chmod(0o644)  # a container's own user reads it through its mount
            if in_container:
                workspace.mounts.append((str(hostfile), HOSTFILE_MOUNT, True))
        return workspace

    # -- code and files ----------------------------------------------------------------------------------

    def _unpack(
        self, code_hash: str, destination: Path, cancelled: Callable[[], bool], what: str, spare: bool = False
    ) -> None:
        """Build the code `code_hash` at `destination` (an empty folder); with `spare`, from a spare copy
        when one is ready (the job's main code: see dstack.agent.spares)."""
        if not self._store.has(code_hash):
            raise WorkspaceError(f"Code {code_hash} has not been uploaded")
        try:
            self._store.assemble(code_hash, destination, cancelled=cancelled, spare=spare)
        except UnpackError as e:
            raise WorkspaceError(f"Could not unpack {what}: {e}") from e

    def _place_files(
        self,
        spec: JobSpec,
        folder: Path,
        code_dir: Path,
        workspace: Workspace,
        cancelled: Callable[[], bool],
    ) -> None:
        if not spec.files:
            return
        root = folder / FILES_DIR
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o755)
        for index, placement in enumerate(spec.files):
            staged = root / str(index)
            staged.mkdir()
            self._unpack(placement.code_hash, staged, cancelled, f"the files for {placement.target}")
            source = staged / placement.name if placement.kind == "file" and placement.name else staged
            if not source.exists() and not source.is_symlink():
                raise WorkspaceError(f"The files for {placement.target} are missing from their archive")
            if _outside(placement.target):
                if spec.image is None:
                    raise WorkspaceError(
                        f"The files target {placement.target} is outside the working directory; "
                        "a task without image can place files only under it"
                    )
                workspace.copies.append((placement.kind, str(source), placement.target))
                continue
            self._copy_in(placement, source, workspace.cwd, code_dir)

    def _copy_in(self, placement: FilePlacement, source: Path, cwd: Path, code_dir: Path) -> None:
        target = cwd / placement.target if placement.target != "." else cwd
        parent = target.parent if placement.kind == "file" else target
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if not is_inside(parent, code_dir):
                raise WorkspaceError(f"The files target {placement.target} leads outside the code folder")
            if placement.kind == "file":
                if target.is_symlink() or target.is_dir():
                    raise WorkspaceError(f"The files target {placement.target} is a folder or a link")
                shutil.copy2(source, target, follow_symlinks=False)
            else:
                shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        except OSError as e:
            raise WorkspaceError(f"Could not place the files at {placement.target}: {e.strerror or e}") from e

    # -- repo --------------------------------------------------------------------------------------------

    def _clone(
        self,
        repo: RepoClone,
        folder: Path,
        code_dir: Path,
        in_container: bool,
        announce: Callable[[str], None],
        notify: Callable[[str], object],
    ) -> List[Tuple[str, str, bool]]:
        mounts: List[Tuple[str, str, bool]] = []
        if _outside(repo.path):
            if not in_container:
                raise WorkspaceError(
                    f"The repo path {repo.path} needs image: it is outside the working directory"
                )
            target = folder / REPO_DIR
            shutil.rmtree(target, ignore_errors=True)
            mounts.append((str(target), repo.path, False))
        else:
            target = self._inside(code_dir, repo.path, "the repo path")
        if target.exists() and any(target.iterdir()):
            if repo.if_exists == "skip":
                announce(f"The repo path {repo.path} is not empty; keeping it (if_exists: skip)")
                return mounts
            raise WorkspaceError(
                f"The repo path {repo.path} already exists and is not empty; "
                "set if_exists: skip to keep what is there"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.rmdir()  # an empty folder: git clones into a folder it creates
        notify(f"Cloning {repo.url}" + (f" (branch {repo.branch})" if repo.branch else ""))
        args = ["clone", "--quiet"]
        if repo.single_branch:
            args.append("--single-branch")
        if repo.branch:
            args += ["--branch", repo.branch]
        self._git([*args, "--", repo.url, str(target)], f"clone {repo.url}")
        if repo.hash:
            self._git(
                ["-C", str(target), "checkout", "--quiet", "--detach", repo.hash, "--"],
                f"check out {repo.hash}",
            )
        return mounts

    def _git(self, args: List[str], what: str) -> None:
        env = dict(self._tool_env, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false")
        code, output = run_tool(self._children, git_argv(*args), env, timeout=CLONE_TIMEOUT_SECONDS)
        if code == 127:
            raise WorkspaceError("git is not installed on this host; the repo cannot be cloned")
        if code != 0:
            raise WorkspaceError(f"Could not {what}: {last_line(output)}")

    # -- volumes -----------------------------------------------------------------------------------------

    def _volumes(self, spec: JobSpec, code_dir: Path, workspace: Workspace) -> None:
        for volume in spec.volumes:
            host = Path(volume.host_path)
            try:
                host.mkdir(parents=True, exist_ok=True)  # as an instance mount does
            except OSError as e:
                if volume.optional:
                    continue
                raise WorkspaceError(f"Could not create the volume folder {host}: {e.strerror or e}") from e
            if spec.image is not None:
                workspace.mounts.append((str(host), volume.path, False))
                continue
            relative = volume.path.lstrip("/")
            link = workspace.cwd / relative
            if os.path.lexists(link):
                raise WorkspaceError(
                    f"The volume {volume.host_path}:{volume.path} cannot appear as ./{relative}: "
                    "the code already has that path"
                )
            try:
                link.parent.mkdir(parents=True, exist_ok=True)
                if not is_inside(link.parent, code_dir):
                    raise WorkspaceError(f"The volume path {volume.path} leads outside the code folder")
                link.symlink_to(host, target_is_directory=True)
            except OSError as e:
                raise WorkspaceError(
                    f"Could not link the volume {volume.host_path}: {e.strerror or e}"
                ) from e

    @staticmethod
    def _inside(code_dir: Path, relative: str, what: str) -> Path:
        target = code_dir if relative in ("", ".") else code_dir / relative
        if not is_inside(target.parent if target != code_dir else target, code_dir):
            raise WorkspaceError(f"{what.capitalize()} {relative} leads outside the code folder")
        return target


def _outside(target: str) -> bool:
    return target.startswith("/") or target == "~" or target.startswith("~/")
