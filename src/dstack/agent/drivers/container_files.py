"""`files` whose targets are outside the working directory (absolute, or `~/...`), copied into a created
container before it starts, through the daemon's archive API (as `docker cp` does).

The daemon writes them as root, so a target the task's user could not write (e.g. /etc/app.conf) still
gets its file, owned by that user; `~` is the home of the container's user, read from its /etc/passwd.
"""

from __future__ import annotations

import posixpath
import tarfile
import tempfile
from typing import Callable, List, Optional, Tuple

from dstack.agent.drivers.dockerapi import DockerClient, DockerError

# (kind, host path, target) for each copy; see `workspace.Workspace.copies`.
Copy = Tuple[str, str, str]


class ContainerFilesError(Exception):
    pass


def place_files(client: DockerClient, container_id: str, copies: List[Copy], user: Optional[str]) -> None:
    home, uid, gid = _account(client, container_id, user)
    with tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for kind, source, target in copies:
                path = _expand(target, home).lstrip("/")
                tar.add(source, arcname=path, recursive=kind == "dir", filter=_owned_by(uid, gid))
        length = archive.tell()
        archive.seek(0)
        try:
            client.put_archive(container_id, "/", archive, length)
        except DockerError as e:
            raise ContainerFilesError(f"Could not copy the files into the container: {e}") from e


def _expand(target: str, home: str) -> str:
    if target == "~":
        return home
    if target.startswith("~/"):
        return posixpath.join(home, target[2:])
    return target


def _owned_by(uid: int, gid: int) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    return owned


def _account(client: DockerClient, container_id: str, user: Optional[str]) -> Tuple[str, int, int]:
    """The home, uid and gid of the container's user (`user`, else the image's, else root)."""
    if not user:
        info = client.inspect_container(container_id) or {}
        user = (info.get("Config") or {}).get("User") or "root"
    name, _, group = user.partition(":")
    passwd = (client.read_file(container_id, "/etc/passwd") or b"").decode("utf-8", errors="replace")
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and (fields[0] == name or fields[2] == name):
            uid, gid = _number(fields[2], 0), _number(fields[3], 0)
            return fields[5] or "/", uid, _number(group, gid) if group else gid
    if name.isdigit():
        return "/", int(name), _number(group, int(name)) if group else int(name)
    if name == "root":
        return "/root", 0, 0
    raise ContainerFilesError(f"The user {name} is not in the image's /etc/passwd")


def _number(text: str, default: int) -> int:
    return int(text) if text.isdigit() and len(text) < 10 else default
