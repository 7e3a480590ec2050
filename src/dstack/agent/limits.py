"""CPU and memory limits for jobs run as processes, through cgroups (v2, or v1's cpu and memory controllers).

Each limited job gets its own cgroup next to the agent's: under the agent's own cgroup in v1 (any cgroup
may hold both processes and children there), under the parent of the agent's cgroup in v2 (where a cgroup
with processes may not give controllers to children). The job's first process moves itself into that
cgroup before it execs the job's shell (see `wrap`), so nothing the job starts can escape the limit.

Where this is impossible (no cgroup file system, not writable, the controllers not delegated) the agent
says so once: `mechanism()` is None, the host's fingerprint reports `limits: null`, and the plan tells the
user that caps are not enforced on that host. Standard library only (the agent runs on Python 3.9).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000
_PREFIX = "dstack-job-"
# The job's first process: write its pid into every cgroup given before "--", then become the job's shell.
_ENTER = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@dataclass(frozen=True)
class JobCgroup:
    """The cgroup folders of one job (one per v1 controller, or one v2 folder)."""

    dirs: Tuple[str, ...]

    def wrap(self, argv: List[str]) -> List[str]:
        """`argv`, run so that its process enters these cgroups first (pids cannot escape the limit)."""
        procs = [os.path.join(d, "cgroup.procs") for d in self.dirs]
        return ["/bin/sh", "-c", _ENTER, "dstack-limits", *procs, "--", *argv]


class Cgroups:
    """Finds where this process may create cgroups with cpu and memory control, and makes them."""

    def __init__(self, mountinfo: str = "/proc/self/mountinfo", cgroup: str = "/proc/self/cgroup") -> None:
        self._mountinfo = mountinfo
        self._cgroup = cgroup
        self._lock = threading.Lock()
        self._probed = False
        self._mechanism: Optional[str] = None
        self._bases: Dict[str, str] = {}  # controller ("cpu", "memory", or "" for v2) -> folder for jobs
        self.reason = "not probed"

    def mechanism(self) -> Optional[str]:
        """ "cgroup v2" or "cgroup v1" if job limits work here, else None (see `reason`)."""
        with self._lock:
            if not self._probed:
                self._probed = True
                self._mechanism = self._probe()
                if self._mechanism is None:
                    log.info("CPU and memory limits are not enforced on this host: %s", self.reason)
            return self._mechanism

    def create(self, name: str, cpus: Optional[float], memory_bytes: Optional[int]) -> Optional[JobCgroup]:
        """A cgroup holding these caps, or None if this host cannot enforce them (or none is asked)."""
        if (cpus is None and memory_bytes is None) or self.mechanism() is None:
            return None
        folder = _PREFIX + name
        if self._mechanism == "cgroup v2":
            path = os.path.join(self._bases[""], folder)
            os.makedirs(path, exist_ok=True)
            if cpus is not None:
                _write(path, "cpu.max", f"{max(1000, int(cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            if memory_bytes is not None:
                _write(path, "memory.max", str(memory_bytes))
                _write_quietly(path, "memory.swap.max", "0")
            return JobCgroup((path,))
        dirs = []
        if cpus is not None:
            path = os.path.join(self._bases["cpu"], folder)
            os.makedirs(path, exist_ok=True)
            _write(path, "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(path, "cpu.cfs_quota_us", str(max(1000, int(cpus * CPU_PERIOD_US))))
            dirs.append(path)
        if memory_bytes is not None:
            path = os.path.join(self._bases["memory"], folder)
            os.makedirs(path, exist_ok=True)
            _write(path, "memory.limit_in_bytes", str(memory_bytes))
            _write_quietly(path, "memory.memsw.limit_in_bytes", str(memory_bytes))  # no swapping past it
            dirs.append(path)
        return JobCgroup(tuple(dirs))

    def remove(self, name: str) -> None:
        """Remove the job's cgroups once its processes are gone (best effort; a busy one stays)."""
        if self.mechanism() is None:
            return
        for base in self._bases.values():
            try:
                os.rmdir(os.path.join(base, _PREFIX + name))
            except OSError:
                pass

    # -- finding a place -------------------------------------------------------------------------------

    def _probe(self) -> Optional[str]:
        try:
            mounts = _cgroup_mounts(_read(self._mountinfo))
            own = _own_cgroups(_read(self._cgroup))
        except OSError as e:
            self.reason = f"cannot read the cgroup setup ({e.strerror or e})"
            return None
        v1 = {c: mounts[c] for c in ("cpu", "memory") if c in mounts}
        if len(v1) == 2:
            bases: Dict[str, str] = {}
            for controller, (mount_point, mount_root) in v1.items():
                path = own.get(controller)
                if path is None:
                    self.reason = f"this process is in no {controller} cgroup"
                    return None
                bases[controller] = _join(mount_point, _relative(path, mount_root))
            return self._try("cgroup v1", bases)
        if "" in mounts and "" in own:
            mount_point, mount_root = mounts[""]
            here = _join(mount_point, _relative(own[""], mount_root))
            controllers = set(_read_quietly(os.path.join(here, "cgroup.controllers")).split())
            if not {"cpu", "memory"} <= controllers:
                self.reason = "the cpu and memory controllers are not delegated to this cgroup"
                return None
            # A v2 cgroup with processes cannot pass controllers to children (the root excepted): so jobs
            # go next to the agent's cgroup, in a folder of their own that passes cpu and memory on.
            at_root = os.path.normpath(here) == os.path.normpath(mount_point)
            parent = here if at_root else os.path.dirname(here)
            if at_root:
                try:
                    _write(parent, "cgroup.subtree_control", "+cpu +memory")
                except OSError as e:
                    self.reason = f"cannot enable cpu and memory control at the cgroup root ({e})"
                    return None
            return self._try("cgroup v2", {"": os.path.join(parent, "dstack-jobs")}, enable=("cpu", "memory"))
        self.reason = "no cgroup file system with the cpu and memory controllers"
        return None

    def _try(self, mechanism: str, bases: Dict[str, str], enable: Tuple[str, ...] = ()) -> Optional[str]:
        probe = _PREFIX + f"probe-{os.getpid()}"
        try:
            for base in bases.values():
                os.makedirs(base, exist_ok=True)
                if enable:
                    _write(base, "cgroup.subtree_control", " ".join(f"+{c}" for c in enable))
                os.mkdir(os.path.join(base, probe))
                os.rmdir(os.path.join(base, probe))
        except OSError as e:
            self.reason = f"cannot create cgroups under {next(iter(bases.values()))} ({e.strerror or e})"
            return None
        self._bases = bases
        self.reason = ""
        return mechanism


def _cgroup_mounts(mountinfo: str) -> Dict[str, Tuple[str, str]]:
    """controller -> (mount point, root of the hierarchy mounted there); "" is the v2 hierarchy."""
    mounts: Dict[str, Tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            mounts.setdefault("", (mount_point, root))
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in ("cpu", "memory"):
                    mounts.setdefault(option, (mount_point, root))
    return mounts


def _own_cgroups(text: str) -> Dict[str, str]:
    """controller -> this process's cgroup path, from /proc/self/cgroup ("" for v2)."""
    own: Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "" and parts[0] == "0":
            own[""] = path
        for controller in controllers.split(","):
            if controller in ("cpu", "memory"):
                own[controller] = path
    return own


def _relative(path: str, mount_root: str) -> str:
    # Inside a cgroup namespace (or a bind mount of a sub-tree) the mount's root is a prefix of the path.
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        return path[len(mount_root) :]
    return path


def _join(mount_point: str, path: str) -> str:
    return os.path.normpath(os.path.join(mount_point, path.lstrip("/")))


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _read_quietly(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


def _write(folder: str, name: str, value: str) -> None:
    with open(os.path.join(folder, name), "w", encoding="ascii") as f:
        f.write(value)


def _write_quietly(folder: str, name: str, value: str) -> None:
    try:
        _write(folder, name, value)
    except OSError:
        pass  # optional knobs (swap accounting) that a kernel may not have


CGROUPS = Cgroups()
