"""The build cache key: the content of everything that defines a built environment.

Into the key go the base (the Python version and interpreter, or the image's id), the working directory,
the build commands, and the content of the files that define the environment:
- every file a build command names (`-r requirements.txt`, `-f environment.yml`, `./wheels/x.whl`), and the
  files a named `requirements` file includes in turn (`-r`, `-c`);
- for a named folder (`pip install .`), its project files (pyproject.toml, setup.py, ...);
- the well-known environment files in the working directory, whether named or not, since tools such as
  `poetry install` or `uv sync` read them implicitly.
Editing any of them gives a new key, so a new build; nothing else (the task's own code) does.

The build commands refer to values by shell variables (`${{ env.REQS }}` is written `"${REQS}"`, and
`${{ run.args }}` `"$@"`; see dstack.config.interpolation), so the values of the variables they refer to
go into the key too, and name the files they stand for: a different value is a different environment.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from dstack.agent.fsutil import is_inside

KEY_VERSION = "2"  # bump when the way keys are made changes, so old cache entries are not reused
ENV_FILE_PATTERNS = (
    "requirements*.txt",
    "requirements*.in",
    "constraints*.txt",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "environment.yml",
    "environment.yaml",
    "conda.yml",
    "conda.yaml",
    "Pipfile",
    "Pipfile.lock",
    "poetry.lock",
    "uv.lock",
    "pdm.lock",
)
_MAX_NAMED_FILES = 1000
_VARIABLE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_ARGS_RE = re.compile(r"\$(?:[@*1-9]|\{[@*1-9]\}|#)")
_INCLUDE_RE = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)")


def build_key(
    base: Iterable[str],
    working_dir: str,
    commands: List[str],
    cwd: Path,
    code_dir: Path,
    variables: Optional[Mapping[str, str]] = None,
    args: Sequence[str] = (),
) -> str:
    """`variables`: the job's own variables (its env, its run name); `args`: its positional parameters."""
    return key_of(base, build_inputs(working_dir, commands, cwd, code_dir, variables, args))


def build_inputs(
    working_dir: str,
    commands: List[str],
    cwd: Path,
    code_dir: Path,
    variables: Optional[Mapping[str, str]] = None,
    args: Sequence[str] = (),
    include: Optional[Callable[[Path], bool]] = None,
) -> Dict[str, Any]:
    """What a build's key is made of, but for the host's part (its base), as JSON.

    The CLI computes this from the user's folder (`include` leaves out what the code upload ignores), so
    that a plan can ask a host whether it has the build without the code being there; the agent from the
    job's copy. Values are digested: the lookup need not carry env values around.
    """
    variables = variables or {}
    referenced = sorted(_referenced(commands) & set(variables))
    uses_args = any(_ARGS_RE.search(command) for command in commands)
    files = environment_files(commands, cwd, code_dir, variables, args, include)
    return {
        "working_dir": working_dir,
        "commands": list(commands),
        "variables": {name: _digest(variables[name].encode()) for name in referenced},
        "args": [_digest(arg.encode()) for arg in args] if uses_args else [],
        "files": [[os.path.relpath(path, code_dir), _file_digest(path).hex()] for path in files],
    }


def key_of(base: Iterable[str], inputs: Mapping[str, Any]) -> str:
    """The key of a build: the host's base (python version and interpreter, or image id) and its inputs."""
    digest = hashlib.sha256()

    def add(kind: str, value: str) -> None:
        # Length-prefixed, so that no two different inputs can run together into the same bytes.
        data = value.encode()
        digest.update(f"{kind}:{len(data)}:".encode())
        digest.update(data)

    add("version", KEY_VERSION)
    for part in base:
        add("base", part)
    add("working_dir", str(inputs["working_dir"]))
    for command in inputs["commands"]:
        add("command", str(command))
    for name, value in sorted(inputs["variables"].items()):
        add("variable", f"{name}={value}")
    for arg in inputs["args"]:
        add("arg", str(arg))
    for relative, content in inputs["files"]:
        add("file", str(relative))
        add("content", str(content))
    return digest.hexdigest()


def check_inputs(data: Any) -> Dict[str, Any]:
    """`build_inputs` as a client sent them; ValueError if they are not of that shape."""
    if not isinstance(data, dict) or set(data) != {"working_dir", "commands", "variables", "args", "files"}:
        raise ValueError("build inputs need working_dir, commands, variables, args and files")
    texts = [data["working_dir"], *data["commands"], *data["variables"], *data["variables"].values()]
    texts += [*data["args"], *(part for pair in data["files"] for part in pair)]
    if not all(isinstance(text, str) for text in texts) or not all(len(pair) == 2 for pair in data["files"]):
        raise ValueError("build inputs hold only strings")
    return data


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def environment_files(
    commands: List[str],
    cwd: Path,
    code_dir: Path,
    variables: Optional[Mapping[str, str]] = None,
    args: Sequence[str] = (),
    include: Optional[Callable[[Path], bool]] = None,
) -> List[Path]:
    """The files whose content defines the environment, sorted, each inside the code folder."""
    found: Set[Path] = set()
    for name in _command_paths(commands, variables or {}, args):
        _add_named(Path(name) if os.path.isabs(name) else cwd / name, code_dir, found)
    _add_project_files(cwd, code_dir, found)
    return sorted(path for path in found if include is None or include(path))


def _command_paths(commands: List[str], variables: Mapping[str, str], args: Sequence[str]) -> List[str]:
    words: List[str] = []
    for command in commands:
        try:
            tokens = shlex.split(command, comments=True)
        except ValueError:  # an unbalanced quote: bash will say so at build time; split on spaces here
            tokens = command.split()
        expanded: List[str] = []
        for token in tokens:
            if token in ("$@", "${@}"):
                expanded.extend(args)
            else:
                expanded.append(
                    _VARIABLE_RE.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), token)
                )
        for token in expanded:
            words.append(token)
            if token.startswith("-") and "=" in token:  # --requirement=req.txt
                words.append(token.split("=", 1)[1])
    return words


def _referenced(commands: List[str]) -> Set[str]:
    return {m.group(1) or m.group(2) for command in commands for m in _VARIABLE_RE.finditer(command)}


def _add_named(path: Path, code_dir: Path, found: Set[Path]) -> None:
    if is_inside(path, code_dir) and path.is_dir():
        _add_project_files(path, code_dir, found)
    else:
        _add_file(path, code_dir, found)


def _add_file(path: Path, code_dir: Path, found: Set[Path]) -> None:
    path = Path(os.path.normpath(path))  # "extra/../constraints.txt" is "constraints.txt"
    if len(found) >= _MAX_NAMED_FILES or path in found or not is_inside(path, code_dir):
        return
    if not path.is_file():
        return
    found.add(path)
    if path.suffix in (".txt", ".in"):
        for included in _includes(path):
            _add_file(path.parent / included, code_dir, found)


def _add_project_files(folder: Path, code_dir: Path, found: Set[Path]) -> None:
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in sorted(names):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in ENV_FILE_PATTERNS):
            _add_file(folder / name, code_dir, found)


def _includes(requirements: Path) -> List[str]:
    try:
        with open(requirements, encoding="utf-8", errors="replace") as f:
            return [m.group(1) for m in map(_INCLUDE_RE.match, f) if m]
    except OSError:
        return []


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.digest()
