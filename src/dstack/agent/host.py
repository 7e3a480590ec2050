"""Facts about the host the agent runs on (what the server needs to offer its capacity).

Every fact is best effort and never fails the request. `docker` is the Docker daemon's version (None: no
daemon answers, so the host cannot run image tasks); `pythons` the Python versions it has, and
`python_downloads` whether uv may install others.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional

from dstack.agent.drivers.dockerapi import DockerClient, DockerError, docker_socket
from dstack.agent.environments.pythons import downloads_allowed, find_interpreters, sort_versions
from dstack.agent.gpus import detect_gpus
from dstack.agent.limits import CGROUPS

_DOCKER_PROBE_TIMEOUT_SECONDS = 2.0


def host_facts(work_dir: Path) -> Dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpus": cpu_count(),
        "arch": platform.machine() or "unknown",
        "memory_bytes": memory_bytes(),
        "disk_free_bytes": disk_free_bytes(work_dir),
        "gpus": gpus(),
        "docker": docker_version(),
        "pythons": sort_versions(list(find_interpreters())),
        "python_downloads": downloads_allowed(),
        # How CPU and memory caps are enforced for process jobs ("cgroup v2"/"cgroup v1"), or None.
        "limits": CGROUPS.mechanism(),
        # The CUDA compiler, for `nvcc: true` tasks (None: not on this host).
        "nvcc": find_nvcc(),
        # Whether GPU utilisation can be measured here (`utilization_policy`): nvidia-smi answers.
        "gpu_metrics": bool(shutil.which("nvidia-smi")),
    }


NVCC_DIRS = ("/usr/local/cuda/bin",)


def find_nvcc() -> Optional[str]:
    """The CUDA compiler on PATH, else in CUDA's usual folder."""
    found = shutil.which("nvcc")
    if found:
        return found
    for folder in NVCC_DIRS:
        candidate = os.path.join(folder, "nvcc")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def docker_version() -> Optional[str]:
    path = docker_socket()
    if path is None or not os.path.exists(path):
        return None
    try:
        version = DockerClient(path).version(timeout=_DOCKER_PROBE_TIMEOUT_SECONDS).get("Version")
    except DockerError:
        return None
    return str(version) if version else "unknown"


def cpu_count() -> int:
    # The CPUs this process may run on (respects cpusets, e.g. in a container), not all of the host's.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def disk_free_bytes(path: Path) -> int:
    try:
        stats = os.statvfs(path)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def gpus() -> List[Dict[str, Any]]:
    return detect_gpus()
