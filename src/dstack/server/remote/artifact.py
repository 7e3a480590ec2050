"""What travels to a remote host, each as one content-addressed file.

- The agent: a zipapp of `dstack.agent` (standard library only). The zip is deterministic (sorted entries,
  fixed times, no compiled files), so the same agent code always gives the same bytes and the same sha256:
  a host that already has `dstack-agent-<sha>.pyz` is never sent it again, and a new server version
  re-ships it only when the agent's code changed.
- uv: the server's own binary (dstack depends on the `uv` package), as `uv-<sha>`, so that `python:` tasks
  get their virtual environments (and, where the host may download, their Python versions) on a host that
  has nothing but its distribution's python3. Only to hosts of the server's own OS and architecture.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import dstack
import dstack.agent

_MAIN = b"import sys\nfrom dstack.agent.main import main\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Artifact:
    path: Path  # on this machine
    sha256: str
    name: str  # the file's name on a host

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@functools.lru_cache(maxsize=1)
def agent_code_id() -> str:
    """What identifies the agent's code: the sha256 of its zipapp (the same code, the same id)."""
    return hashlib.sha256(_zipapp_bytes()).hexdigest()


def _zipapp_bytes() -> bytes:
    package_root = Path(dstack.__file__).parent
    agent_root = Path(dstack.agent.__file__).parent
    files = [package_root / "__init__.py"]
    for folder, dirs, names in os.walk(agent_root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in [("__main__.py", _MAIN)] + [
            (path.relative_to(package_root.parent).as_posix(), path.read_bytes()) for path in files
        ]:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def agent_zipapp(cache_dir: Path) -> Artifact:
    """The agent zipapp for this server's code, written once into `cache_dir` (private to the owner)."""
    data = _zipapp_bytes()
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir / f"dstack-agent-{digest[:16]}.pyz"
    if not path.exists():
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_suffix(f".tmp{os.getpid()}")
        temp.write_bytes(data)
        temp.chmod(0o600)
        temp.replace(path)
    return Artifact(path=path, sha256=digest, name=path.name)


_UV_CACHE: dict[tuple[str, int, int], Artifact] = {}


def uv_binary() -> Artifact | None:
    """The server's own uv binary, content-addressed (None if the uv package has no binary here)."""
    try:
        from uv import find_uv_bin

        path = Path(find_uv_bin())
        info = path.stat()
    except (ImportError, FileNotFoundError, OSError):
        return None
    key = (str(path), info.st_size, info.st_mtime_ns)
    found = _UV_CACHE.get(key)
    if found is None:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        found = Artifact(path=path, sha256=digest.hexdigest(), name=f"uv-{digest.hexdigest()[:16]}")
        _UV_CACHE[key] = found
    return found


def server_platform() -> tuple[str, str]:
    """(OS, machine) of this server, as a host's probe reports its own: where uv_binary() runs."""
    import platform

    return platform.system().lower(), platform.machine().lower()
