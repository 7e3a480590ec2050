"""What a run brings beside its code: `files` mappings and a `repos` local path, on the user's machine.

Local paths are resolved as in dstack: `~` is the user's home, a relative path is relative to the folder of
the configuration file. Each `files` entry is packed like the code (content-addressed, the ignore rules of a
folder honoured, the size limit naming the biggest files) with `dstack.code.snapshot_code`, and only the
contents the server lacks are uploaded.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dstack.cli.errors import CLIError
from dstack.code import IgnoreRules


def local_path(written: str, config_dir: Path) -> Path:
    path = Path(written).expanduser()
    return path if path.is_absolute() else (config_dir / path)


def check_files(configuration: dict[str, Any], config_dir: Path) -> list[dict[str, Any]]:
    """The `files` entries with their local path resolved; an entry whose path is missing is an error."""
    found = []
    for mapping in configuration.get("files") or []:
        written = mapping["local_path"]
        path = local_path(written, config_dir)
        if not path.exists():
            raise CLIError(f"The files entry {written!r} names {path}, which does not exist")
        if not (path.is_file() or path.is_dir()):
            raise CLIError(f"The files entry {written!r} names {path}, which is neither a file nor a folder")
        found.append({"source": written, "path": path, "target": _target(mapping)})
    return found


def _target(mapping: dict[str, Any]) -> str:
    from dstack.config.mounts import FileMapping

    return FileMapping.model_validate(mapping).target


def pack_files(files: list[dict[str, Any]], limit_bytes: int) -> list[tuple[dict[str, Any], Any]]:
    """Snapshot each entry; returns (the spec's FileUpload, its snapshot) pairs."""
    from dstack.code import CodeTooLargeError, snapshot_code

    packed = []
    for item in files:
        path: Path = item["path"]
        try:
            if path.is_dir():
                snapshot = snapshot_code(path, limit_bytes=limit_bytes)
                upload = {"kind": "dir", "name": None}
            else:
                rules = _OnlyFile(path.parent, path.name)
                snapshot = snapshot_code(path.parent, limit_bytes=limit_bytes, rules=rules)
                upload = {"kind": "file", "name": path.name}
        except CodeTooLargeError as e:
            raise CLIError(f"The files entry {item['source']!r} is too large: {e}") from None
        upload.update(code_hash=snapshot.code_hash, target=item["target"], source=item["source"])
        packed.append((upload, snapshot))
    return packed


class _OnlyFile(IgnoreRules):
    """Ignore rules that keep one file of a folder: a `files` entry names exactly what it uploads."""

    def __init__(self, root: Path, name: str) -> None:
        super().__init__(root)
        self._name = name

    def is_ignored_in(self, parent_dir: str, name: str, is_dir: bool) -> bool:
        return bool(parent_dir) or name != self._name

    def is_ignored(self, rel_path: str, is_dir: bool) -> bool:
        return rel_path.strip("/") != self._name


def repo_folder(configuration: dict[str, Any], config_dir: Path) -> tuple[Path, str] | None:
    """A `repos` local_path: (the folder to pack instead of the code root, where it goes in the task)."""
    repos = configuration.get("repos") or []
    if not repos or repos[0].get("local_path") is None:
        return None
    repo = repos[0]
    path = local_path(repo["local_path"], config_dir)
    if not path.is_dir():
        raise CLIError(f"The repo local_path {repo['local_path']!r} names {path}, which is not a folder")
    _check_checkout(path, repo)
    return path.resolve(), repo.get("path") or "."


def _check_checkout(path: Path, repo: dict[str, Any]) -> None:
    """A local repo is uploaded as it is on disk: a branch or hash it names must be what is checked out."""
    branch, commit = repo.get("branch"), repo.get("hash")
    if branch is None and commit is None:
        return
    head = _git(path, "rev-parse", "HEAD")
    if head is None:
        raise CLIError(f"The repo local_path {path} is not a Git repository, so branch and hash cannot apply")
    if commit is not None and not head.startswith(commit):
        raise CLIError(
            f"The repo at {path} is at commit {head[:12]}, not {commit}; check out {commit} or remove hash"
        )
    if branch is not None:
        current = _git(path, "rev-parse", "--abbrev-ref", "HEAD")
        if current != branch:
            raise CLIError(f"The repo at {path} is on branch {current}, not {branch}; check out {branch}")


def _git(path: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
