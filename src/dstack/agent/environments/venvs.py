"""Python virtual environments for tasks: a read-only template per Python version, made with uv, and a
copy of it (or of a cached build) of each run's own (`RunVenvs`, see clones.py).

A venv is made where it will be used: its scripts' shebangs hold its absolute path (a copy gets them
rewritten). A `.dstack-ready` file is written last, so a template cut short by a crash is recognised,
removed and made again.

pip is put in offline, from the wheel that the interpreter's own `ensurepip` bundles (uv's `--seed` would
fetch it from the package index); only an interpreter without that wheel falls back to `--seed`. Its
scripts are then replaced by pip_shim.py, which runs `uv pip` where uv does what was asked.
"""

from __future__ import annotations

import glob
import os
import pkgutil
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from dstack.agent.environments import pythons
from dstack.agent.environments.clones import clone, seal
from dstack.agent.environments.tools import ToolError, last_line, run_tool
from dstack.agent.fsutil import strip_other_modes
from dstack.agent.reaper import ChildProcesses

READY_FILE = ".dstack-ready"
_FOUND_FOR_SECONDS = 10.0
# Run copies kept for later runs, of all sources together (a copy of a template is ~600 hard links and a
# few small files): as many as a burst had at once, up to _MOST_COPIES, then, once they have been unused
# for _SPARE_SECONDS, _KEPT_COPIES. Removing them at once would make a burst pay for every copy twice.
_KEPT_COPIES = 16
_MOST_COPIES = 256
_SPARE_SECONDS = 120.0


@dataclass(frozen=True)
class Venv:
    path: Path
    version: str
    interpreter: str  # the base interpreter it was made from

    @property
    def bin_dir(self) -> Path:
        return self.path / "bin"

    def environment(self, base_path: str) -> Dict[str, str]:
        """Variables that make `python` and `pip` this venv's, as activating it would."""
        return {"VIRTUAL_ENV": str(self.path), "PATH": f"{self.bin_dir}{os.pathsep}{base_path}"}


class VenvFactory:
    """Finds interpreters (installing one with uv where allowed) and makes venvs from them."""

    def __init__(self, children: ChildProcesses, tool_env: Mapping[str, str]) -> None:
        self._children = children
        self._env = dict(tool_env)
        # Environments are made for the agent, not for a project: uv must not read a uv.toml/pyproject
        # from wherever it runs, nor ask an interpreter download of its own.
        self._env["UV_PYTHON_DOWNLOADS"] = "never"
        self._env.pop("VIRTUAL_ENV", None)
        self._install_lock = threading.Lock()
        self._found: Dict[str, Tuple[str, float]] = {}

    def interpreter(self, version: str, notify: Callable[[str], object]) -> str:
        # Looking the host's interpreters up reads several folders; a burst of jobs asks for the same
        # version a thousand times a second. A path found a moment ago that is still there is the answer.
        found = self._found.get(version)
        if (
            found is not None
            and time.monotonic() - found[1] < _FOUND_FOR_SECONDS
            and os.access(found[0], os.X_OK)
        ):
            return found[0]
        path = pythons.find_interpreters().get(version)
        if path is not None:
            self._found[version] = (path, time.monotonic())
            return path
        with self._install_lock:  # two jobs asking for the same missing version install it once
            path = pythons.find_interpreters().get(version)
            if path is not None:
                return path
            notify(f"Installing Python {version}")
            env = dict(self._env)
            env.pop("UV_PYTHON_DOWNLOADS", None)  # the host's own setting decides (checked by install)
            return pythons.install_python(self._children, version, env)

    def create(self, path: Path, version: str, interpreter: str) -> Venv:
        """Make a fresh venv at `path` (whatever was there is removed) with pip in it."""
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        uv = pythons.find_uv()
        try:
            if uv is None:
                self._run([interpreter, "-m", "venv", str(path)], "python -m venv")
            else:
                self._create_with_uv(uv, path, interpreter)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        uv = pythons.find_uv()
        if uv is not None:
            install_shims(path, version, uv)
        strip_other_modes(path)
        return Venv(path=path, version=version, interpreter=interpreter)

    def _create_with_uv(self, uv: str, path: Path, interpreter: str) -> None:
        wheels = _bundled_pip_wheels(interpreter)
        argv = [uv, "venv", "--quiet", "--no-config", "--python", interpreter, str(path)]
        if wheels is None:
            self._run([*argv, "--seed"], "uv venv")
            return
        self._run(argv, "uv venv")
        self._run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--no-config",
                "--python",
                str(path / "bin" / "python"),
                "--offline",
                "--compile-bytecode",  # once here, not by each run (copies import pip from here)
                "--no-index",
                "--find-links",
                wheels,
                "pip",
            ],
            "uv pip install pip",
        )

    def _run(self, argv: List[str], what: str) -> None:
        code, output = run_tool(self._children, argv, self._env, cwd="/")
        if code != 0:
            raise ToolError(f"Could not create the Python environment ({what}): {last_line(output)}")


def _bundled_pip_wheels(interpreter: str) -> Optional[str]:
    """The folder holding the pip wheel that `ensurepip` of this interpreter bundles, if any."""
    prefix = Path(os.path.realpath(interpreter)).parent.parent
    candidates = glob.glob(str(prefix / "lib" / "python3*" / "ensurepip" / "_bundled" / "pip-*.whl"))
    # Debian keeps its ensurepip wheels apart (package python3-pip-whl).
    candidates += glob.glob("/usr/share/python-wheels/pip-*.whl") if str(prefix) == "/usr" else []
    return str(Path(sorted(candidates)[-1]).parent) if candidates else None


def is_ready(path: Path) -> bool:
    return (path / READY_FILE).is_file()


def mark_ready(path: Path) -> None:
    (path / READY_FILE).write_text("ok\n", encoding="ascii")


def install_shims(venv: Path, version: str, uv: str) -> None:
    """Make the venv's `pip`, `pip3` and `pip3.X` scripts run pip_shim.py (uv's pip where it can)."""
    # Through the loader, not the file system: the agent may run from a zipapp (shipped to remote hosts).
    data = pkgutil.get_data(__package__ or "dstack.agent.environments", "pip_shim.py")
    if data is None:
        return  # the package cannot say: the venv keeps pip's own scripts
    source = data.decode("utf-8")
    source = source.replace('\nUV = ""', f"\nUV = {uv!r}", 1)
    script = f"#!{venv / 'bin' / 'python'}\n" + source
    for name in ("pip", "pip3", f"pip{version}"):
        path = venv / "bin" / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(script, encoding="utf-8")
        os.chmod(tmp, 0o700)  # private, as everything of the agent (strip_other_modes follows)
        os.replace(tmp, path)


class Templates:
    """The per-version venv that runs without a build are copied from, under ROOT/python/3.X; never used
    itself, so never changed by a task (its files are read-only)."""

    def __init__(self, root: Path, factory: VenvFactory) -> None:
        self._root = root
        self._factory = factory
        self._locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def get(self, version: str, notify: Callable[[str], object]) -> Venv:
        with self._locks_guard:
            lock = self._locks.setdefault(version, threading.Lock())
        with lock:
            path = self._root / version
            interpreter = self._factory.interpreter(version, notify)
            if is_ready(path) and _intact(path):
                return Venv(path=path, version=version, interpreter=interpreter)
            notify(f"Creating the Python {version} environment")
            venv = self._factory.create(path, version, interpreter)
            seal(path)
            mark_ready(path)
            return venv


class RunVenvs:
    """Each run's own venv, ROOT/<copy>/venv: a copy of a template or of a cached build.

    Making a copy and removing it are most of what a tiny task costs its host (a template holds pip's
    ~530 files). So a copy that its run left as it got it — its folders and rewritten files unchanged
    (see _fingerprint), which any install, removal, `pip` run that writes bytecode, or in-place edit of a
    rewritten file breaks — is kept for the next run of the same source instead; a changed one is
    removed. The copies are named apart from the jobs, since the path is written into the copy's scripts.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._free: List[Tuple[_Copy, float]] = []  # with when each was let go, oldest first
        self._taken: Dict[str, _Copy] = {}  # by job id

    def make(self, job_id: str, source: Venv, shared_packages: bool = False) -> Venv:
        """A copy of `source` for the job; of a template, one that shares its packages (see clones.py)."""
        origin = (*_origin(source), shared_packages)
        with self._lock:
            kept = next((k for k in reversed(self._free) if k[0].origin == origin), None)
            if kept is not None:
                self._free.remove(kept)
            gone = self._prune()
        _remove_later(gone)
        copy = None if kept is None else kept[0]
        if copy is None:
            copy = self._new_copy(source, origin, shared_packages)
        with self._lock:
            self._taken[job_id] = copy
        return Venv(path=copy.venv, version=source.version, interpreter=source.interpreter)

    def release(self, job_id: str) -> None:
        """The run is over: its copy is kept for the next run if the run left it as it was, else removed."""
        with self._lock:
            copy = self._taken.pop(job_id, None)
        if copy is None:
            return
        unchanged = _fingerprint(copy.own) == copy.fingerprint
        with self._lock:
            if unchanged:
                self._free.append((copy, time.monotonic()))
            gone = self._prune() + ([] if unchanged else [copy])
        _remove_later(gone)

    def _prune(self) -> List[_Copy]:
        """Take the surplus kept copies out of the pool (under the lock), for the caller to remove."""
        now = time.monotonic()
        gone: List[_Copy] = []
        while self._free and (
            len(self._free) > _MOST_COPIES
            or (len(self._free) > _KEPT_COPIES and now - self._free[0][1] > _SPARE_SECONDS)
        ):
            gone.append(self._free.pop(0)[0])
        return gone

    def collect_garbage(self) -> None:
        """Remove every copy no job holds (call when none is being made)."""
        with self._lock:
            self._free = []
            held = {copy.venv.parent.name for copy in self._taken.values()}
        for name in _listdir(self._root):
            if name not in held:
                shutil.rmtree(self._root / name, ignore_errors=True)

    def _new_copy(self, source: Venv, origin: Tuple[object, ...], shared_packages: bool) -> _Copy:
        folder = self._root / uuid.uuid4().hex[:16]
        target = folder / "venv"
        try:
            own = clone(source.path, target, shared_packages)
        except OSError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise ToolError(f"Could not copy the Python environment for this run: {e.strerror or e}") from e
        return _Copy(venv=target, origin=origin, own=own, fingerprint=_fingerprint(own))


@dataclass(frozen=True)
class _Copy:
    venv: Path
    origin: Tuple[object, ...]  # what it was copied from (see _origin)
    own: List[str]  # its folders and rewritten files (see clones.clone)
    fingerprint: Tuple[Tuple[int, ...], ...]  # their status when made (see _fingerprint)


def _origin(source: Venv) -> Tuple[object, ...]:
    """The source venv as made: a template made again at the same path (a new interpreter) differs."""
    status = os.lstat(source.path)
    return (str(source.path), status.st_ino, status.st_mtime_ns, source.interpreter)


def _fingerprint(own: List[str]) -> Tuple[Tuple[int, ...], ...]:
    """The status (inode, mode, owner, size, mtime, ctime) of a copy's own entries (see clones.clone).
    Whatever is added, removed or renamed anywhere in the copy changes a folder's times; an in-place
    edit of a rewritten file, its ctime, even if its mtime is put back (no process can set a ctime). An
    edit of a linked file in place would change the original as well (see clones.py)."""
    status: List[Tuple[int, ...]] = []
    for path in own:
        try:
            s = os.lstat(path)
        except OSError:
            status.append(())
            continue
        status.append((s.st_ino, s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
    return tuple(status)


def _remove_later(copies: List[_Copy]) -> None:
    """Remove copies off the job's way: one that a run installed into can take a while."""
    if copies:
        folders = [copy.venv.parent for copy in copies]
        threading.Thread(target=_remove_all, args=(folders,), name="venv-removal", daemon=True).start()


def _remove_all(folders: List[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _listdir(folder: Path) -> List[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _intact(path: Path) -> bool:
    """False if the interpreter the venv points at is gone (e.g. pyenv replaced 3.12.1 by 3.12.2)."""
    python = path / "bin" / "python"
    return os.path.exists(os.path.realpath(python)) and os.access(python, os.X_OK)
