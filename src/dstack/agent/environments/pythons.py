"""The Python interpreters of this host, and uv: which versions a task can get here, and from where.

Interpreters are found by looking at files, never through pyenv's shims (a shim for a version that is not
pyenv's global one fails, and breaks uv's own search) and never by letting uv search: the agent passes uv
the interpreter's path, so uv never downloads one behind its back. Looked at, in order of preference: the
agent's own interpreter, pyenv's versions ($PYENV_ROOT/versions, default ~/.pyenv/versions), uv's managed
Pythons, /usr/local/bin and /usr/bin.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from dstack.agent.environments.tools import ToolError, last_line, run_tool
from dstack.agent.reaper import ChildProcesses

MIN_MINOR = 8  # uv creates environments for Python 3.8 and later
_PYENV_VERSION_RE = re.compile(r"^3\.(\d+)\.(\d+)$")
_UV_MANAGED_RE = re.compile(r"^cpython-3\.(\d+)\.(\d+)-")
_SYSTEM_BINARY_RE = re.compile(r"^python3\.(\d+)$")
_INSTALL_TIMEOUT_SECONDS = 900.0


def version_text(minor: int) -> str:
    return f"3.{minor}"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def uv_python_dir() -> Path:
    """Where uv keeps the Pythons it installs (its UV_PYTHON_INSTALL_DIR rules)."""
    configured = os.environ.get("UV_PYTHON_INSTALL_DIR")
    if configured:
        return Path(configured)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "uv" / "python"


def _patch_sorted(entries: List[Tuple[int, int, Path]]) -> List[Tuple[int, Path]]:
    # The newest patch release of each minor version comes first.
    return [(minor, path) for minor, _, path in sorted(entries, key=lambda e: (e[0], e[1]), reverse=True)]


def _pyenv_interpreters() -> List[Tuple[int, Path]]:
    versions = _pyenv_root() / "versions"
    entries = []
    try:
        names = os.listdir(versions)
    except OSError:
        return []
    for name in names:
        match = _PYENV_VERSION_RE.match(name)
        if match:
            minor = int(match.group(1))
            entries.append((minor, int(match.group(2)), versions / name / "bin" / f"python3.{minor}"))
    return _patch_sorted(entries)


def _uv_managed_interpreters() -> List[Tuple[int, Path]]:
    root = uv_python_dir()
    entries = []
    try:
        names = os.listdir(root)
    except OSError:
        return []
    for name in names:
        match = _UV_MANAGED_RE.match(name)
        if match:
            minor = int(match.group(1))
            entries.append((minor, int(match.group(2)), root / name / "bin" / f"python3.{minor}"))
    return _patch_sorted(entries)


def _system_interpreters() -> List[Tuple[int, Path]]:
    found = []
    for folder in ("/usr/local/bin", "/usr/bin"):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            match = _SYSTEM_BINARY_RE.match(name)
            if match:
                found.append((int(match.group(1)), Path(folder) / name))
    return found


def _own_interpreter() -> List[Tuple[int, Path]]:
    # The agent's base interpreter (not a virtualenv's symlink to it): it is known to work.
    minor = sys.version_info.minor
    return [(minor, Path(sys.base_prefix) / "bin" / f"python3.{minor}")]


def find_interpreters() -> Dict[str, str]:
    """Python version ("3.12") -> the path of an interpreter of that version on this host."""
    found: Dict[str, str] = {}
    for source in (_own_interpreter, _pyenv_interpreters, _uv_managed_interpreters, _system_interpreters):
        for minor, path in source():
            version = version_text(minor)
            if minor >= MIN_MINOR and version not in found and _executable(path):
                found[version] = str(path)
    return found


def sort_versions(versions: List[str]) -> List[str]:
    return sorted(versions, key=lambda v: tuple(int(part) for part in v.split(".")))


UV_ENV = "DSTACK_AGENT_UV"  # set by a server that shipped uv to this host with the agent


def find_uv() -> Optional[str]:
    """The uv binary: the one a server shipped with the agent, the one installed beside the agent's
    interpreter (dstack depends on uv), or one on PATH."""
    shipped = os.environ.get(UV_ENV)
    if shipped and _executable(Path(shipped)):
        return shipped
    beside = Path(sys.executable).parent / "uv"
    if _executable(beside):
        return str(beside)
    shims = str(_pyenv_root() / "shims")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or os.path.normpath(folder) == os.path.normpath(shims):
            continue
        candidate = Path(folder) / "uv"
        if _executable(candidate):
            return str(candidate)
    return None


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def downloads_allowed() -> bool:
    """True if uv is here and may fetch Pythons this host lacks (UV_PYTHON_DOWNLOADS is not `never`)."""
    if find_uv() is None or _truthy(os.environ.get("UV_OFFLINE")):
        return False
    return os.environ.get("UV_PYTHON_DOWNLOADS", "automatic").strip().lower() != "never"


def install_python(children: ChildProcesses, version: str, env: Dict[str, str]) -> str:
    """Have uv install `version`; returns the new interpreter's path. Raises ToolError if it cannot."""
    uv = find_uv()
    if uv is None or not downloads_allowed():
        raise ToolError(f"Python {version} is not installed on this host and downloads are turned off")
    code, output = run_tool(
        children, [uv, "python", "install", "--no-config", version], env, timeout=_INSTALL_TIMEOUT_SECONDS
    )
    if code != 0:
        raise ToolError(
            f"Python {version} is not installed on this host and uv could not install it: {last_line(output)}"
        )
    path = find_interpreters().get(version)
    if path is None:
        raise ToolError(f"uv installed Python {version} but the agent cannot find it in {uv_python_dir()}")
    return path
