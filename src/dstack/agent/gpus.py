"""The host's GPUs: NVIDIA through nvidia-smi (NVML's CSV query), AMD through rocm-smi. Best effort.

Each GPU is reported as {index, name, memory_bytes, vendor, uuid}. `index` is the driver's own numbering
(nvidia-smi's index, which is PCI bus order): the agent gives a task `CUDA_VISIBLE_DEVICES` with these
indices and `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so CUDA numbers the devices the same way. A missing tool, a
driver that does not answer or an output that cannot be read means "no GPUs of that vendor", never a failed
request: an admin can still declare the GPUs in the server's config. Standard library only (Python 3.9).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional

log = logging.getLogger(__name__)

NVIDIA_QUERY = [
    "--query-gpu=index,name,memory.total,uuid",
    "--format=csv,noheader,nounits",
]
ROCM_QUERY = ["--showproductname", "--showmeminfo", "vram", "--json"]
TOOL_TIMEOUT_SECONDS = 15.0
# GPUs do not come and go while a host runs; the tools take 0.1-2 s, so they are not asked on every request.
CACHE_SECONDS = 300.0
MIB = 1024 * 1024

_lock = threading.Lock()
_cached: Optional[List[Dict[str, Any]]] = None
_cached_at = 0.0


def detect_gpus() -> List[Dict[str, Any]]:
    global _cached, _cached_at
    with _lock:
        if _cached is None or time.monotonic() - _cached_at > CACHE_SECONDS:
            _cached = nvidia_gpus() + amd_gpus()
            _cached_at = time.monotonic()
        return [dict(gpu) for gpu in _cached]


def nvidia_gpus() -> List[Dict[str, Any]]:
    output = _run_tool("nvidia-smi", NVIDIA_QUERY)
    return parse_nvidia_csv(output) if output is not None else []


def amd_gpus() -> List[Dict[str, Any]]:
    output = _run_tool("rocm-smi", ROCM_QUERY)
    return parse_rocm_json(output) if output is not None else []


def parse_nvidia_csv(text: str) -> List[Dict[str, Any]]:
    """Lines of `index, name, memory.total (MiB), uuid`; lines that cannot be read are skipped."""
    gpus = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        try:
            memory_mib = float(fields[2])
        except ValueError:
            memory_mib = 0.0  # "[N/A]" on some virtualised GPUs: the device is still there
        gpus.append(
            {
                "index": int(fields[0]),
                "name": fields[1],
                "memory_bytes": int(memory_mib * MIB),
                "vendor": "nvidia",
                "uuid": fields[3] if len(fields) > 3 else None,
            }
        )
    return gpus


def parse_rocm_json(text: str) -> List[Dict[str, Any]]:
    """rocm-smi's JSON: {"card0": {"Card series": ..., "VRAM Total Memory (B)": ...}, ...}."""
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    gpus = []
    for card, info in data.items():
        if not (isinstance(card, str) and card.startswith("card") and card[4:].isdigit()):
            continue
        if not isinstance(info, dict):
            continue
        fields = {str(key).lower(): value for key, value in info.items()}
        name = str(fields.get("card series") or fields.get("card model") or "AMD GPU").strip()
        if not name.upper().startswith("AMD"):
            name = f"AMD {name}"
        try:
            memory = int(str(fields.get("vram total memory (b)", "0")).strip())
        except ValueError:
            memory = 0
        gpus.append(
            {
                "index": int(card[4:]),
                "name": name,
                "memory_bytes": memory,
                "vendor": "amd",
                "uuid": str(fields["unique id"]) if fields.get("unique id") else None,
            }
        )
    return sorted(gpus, key=lambda gpu: gpu["index"])


def query_nvidia_smi(args: List[str]) -> Optional[str]:
    """nvidia-smi's output for `args`, or None where it is missing or fails."""
    return _run_tool("nvidia-smi", args)


def _run_tool(tool: str, args: List[str]) -> Optional[str]:
    path = shutil.which(tool)
    if path is None:
        return None
    try:
        # Not through the agent's ChildProcesses: if its reaper collects this child first, run() still
        # has the whole output (read before the wait) and only the exit code is lost, which is harmless.
        result = subprocess.run(
            [path, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("%s did not answer: %s", tool, e)
        return None
    if result.returncode != 0:
        # e.g. "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
        first = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        log.warning("%s failed (exit code %d): %s", tool, result.returncode, first[0] if first else "")
        return None
    return result.stdout.decode(errors="replace")
