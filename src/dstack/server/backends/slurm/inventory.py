"""What a Slurm cluster offers: its partitions and node shapes, from `scontrol show partition/node -o`.

Pure: text in, shapes out. An offer is one (partition, shape) pair, where a shape is the nodes of a
partition with the same CPUs, memory, GPUs and architecture; its node counts (idle, mixed, allocated,
down) are shown with the offer. The offer's name is CLUSTER/PARTITION/SHAPE, e.g. `hpc/gpu/8xCPU-64GB-2xGPU`
(scheduler/messages.py turns it into "partition gpu of cluster hpc").

GPUs come from the nodes' GRES (`gpu:2`, `gpu:a100:4(S:0-1)`); GRES has no memory size and often no model,
so a cluster's `gpu_partitions` entry names them (`gpu: A100:80GB`). Elsewhere a GPU is named after its
GRES type (or "GPU") with its memory unknown, so a task that asks for a GPU by memory does not fit it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dstack.server.config_file import SlurmClusterConfig

MB = 1024**2
GB = 1024**3
_FIELD = re.compile(r"\s+(?=[A-Za-z][A-Za-z0-9_/:.]*=)")
_GRES_GPU = re.compile(r"^gpu(?::([^:(]+))?:(\d+)")
# Node state flags that make a node unusable until an admin acts.
_UNUSABLE = {"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "NOT_RESPONDING", "INVALID_REG"}


def parse_records(text: str) -> list[dict[str, str]]:
    """`scontrol show X -o` output: one record per line, `Key=Value` fields (values may hold spaces)."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "=" not in line:
            continue
        record = {}
        for part in _FIELD.split(line):
            key, _, value = part.partition("=")
            record[key] = value.strip()
        records.append(record)
    return records


@dataclass(frozen=True)
class Partition:
    name: str
    up: bool


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    partitions: tuple[str, ...]
    cpus: int
    memory_mb: int
    arch: str
    gpus: int
    gpu_type: str | None
    state: str  # idle | mixed | allocated | down

    @property
    def shape_key(self) -> tuple[int, int, int, str | None, str]:
        return (self.cpus, self.memory_mb, self.gpus, self.gpu_type, self.arch)


@dataclass
class Shape:
    cluster: str
    partition: str
    cpus: int
    memory_mb: int
    arch: str
    gpus: int
    gpu_type: str | None  # the GRES type, used in --gres=gpu:TYPE:N
    gpu_name: str  # what a task asks for: the configured name, the GRES type, or "GPU"
    gpu_memory_gb: float
    counts: dict[str, int] = field(default_factory=lambda: {"idle": 0, "mixed": 0, "allocated": 0, "down": 0})
    partition_up: bool = True

    @property
    def name(self) -> str:
        return f"{self.cluster}/{self.partition}/{self.shape_id}"

    @property
    def shape_id(self) -> str:
        text = f"{self.cpus}xCPU-{self.memory_mb * MB / GB:.0f}GB"
        return text + (f"-{self.gpus}x{self.gpu_name}" if self.gpus else "")

    @property
    def usable(self) -> int:
        return self.counts["idle"] + self.counts["mixed"] + self.counts["allocated"]

    @property
    def note(self) -> str:
        c = self.counts
        return f"{c['idle']} idle, {c['mixed']} mixed, {c['allocated']} allocated, {c['down']} down"

    @property
    def unavailable_reason(self) -> str | None:
        if not self.partition_up:
            return f"partition {self.partition} is down"
        if not self.usable:
            return f"every node of this shape is down or drained ({self.note})"
        return None

    def resources(self) -> dict[str, Any]:
        """In the agent's fingerprint keys, as the scheduler reads hosts."""
        vendor = "amd" if self.gpu_name.upper().startswith("MI") else "nvidia"
        return {
            "cpus": self.cpus,
            "memory_bytes": self.memory_mb * MB,
            "arch": self.arch,
            "gpus": [
                {
                    "index": i,
                    "name": self.gpu_name,
                    "memory_bytes": int(self.gpu_memory_gb * GB),
                    "vendor": vendor,
                }
                for i in range(self.gpus)
            ],
        }


def parse_partitions(text: str) -> list[Partition]:
    return [
        Partition(name=r["PartitionName"], up=r.get("State", "UP").upper() == "UP")
        for r in parse_records(text)
        if "PartitionName" in r
    ]


def parse_nodes(text: str) -> list[Node]:
    nodes = []
    for r in parse_records(text):
        if "NodeName" not in r:
            continue
        gpus, gpu_type = parse_gres(r.get("Gres", ""))
        nodes.append(
            Node(
                name=r["NodeName"],
                address=r.get("NodeAddr") or r["NodeName"],
                partitions=tuple(p for p in r.get("Partitions", "").split(",") if p),
                cpus=_int(r.get("CPUEfctv") or r.get("CPUTot")),
                memory_mb=_int(r.get("RealMemory")),
                arch=_arch(r.get("Arch", "")),
                gpus=gpus,
                gpu_type=gpu_type,
                state=node_state(r.get("State", "")),
            )
        )
    return nodes


def parse_gres(text: str) -> tuple[int, str | None]:
    """The GPUs of a node's GRES: ("gpu:a100:4(S:0-1),nic:1") -> (4, "a100")."""
    count, types = 0, set()
    for entry in text.split(","):
        match = _GRES_GPU.match(entry.strip())
        if match:
            count += int(match.group(2))
            types.add(match.group(1))
    kinds = {t for t in types if t}
    return count, (kinds.pop() if len(kinds) == 1 and None not in types else None)


def node_state(text: str) -> str:
    words = set(text.upper().replace("*", "").split("+"))
    if words & _UNUSABLE or "UNKNOWN" in words or "FUTURE" in words:
        return "down"
    if "MIXED" in words:
        return "mixed"
    if words & {"ALLOCATED", "COMPLETING"}:
        return "allocated"
    return "idle"  # IDLE, and powered-down nodes Slurm can boot


def shapes(
    cluster: SlurmClusterConfig, partitions: list[Partition], nodes: list[Node]
) -> tuple[list[Shape], list[str]]:
    """The offered shapes, and the partitions the config names that the cluster does not have."""
    known = {p.name: p for p in partitions}
    gpu_listed = [name for entry in cluster.gpu_partitions for name in entry.partitions]
    wanted = (
        list(cluster.cpu_partitions)
        if cluster.cpu_partitions is not None
        else [p.name for p in partitions if p.name not in gpu_listed]
    )
    wanted += [name for name in gpu_listed if name not in wanted]
    missing = [name for name in wanted if name not in known]
    found: dict[tuple[str, tuple[int, int, int, str | None, str]], Shape] = {}
    for partition_name in (name for name in wanted if name in known):
        declared = cluster.gpu_of(partition_name)
        for node in nodes:
            if partition_name not in node.partitions:
                continue
            key = (partition_name, node.shape_key)
            shape = found.get(key)
            if shape is None:
                shape = Shape(
                    cluster=cluster.name,
                    partition=partition_name,
                    cpus=node.cpus,
                    memory_mb=node.memory_mb,
                    arch=node.arch,
                    gpus=node.gpus,
                    gpu_type=node.gpu_type,
                    gpu_name=declared.gpu_name if declared else (node.gpu_type or "GPU").upper(),
                    gpu_memory_gb=declared.gpu_memory_gb if declared else 0.0,
                    partition_up=known[partition_name].up,
                )
                found[key] = shape
            shape.counts[node.state] += 1

    # Shapes without GPUs first (a task that needs none lands there before it takes a GPU node); of those
    # with GPUs, the partitions the config declares first.
    def order(shape: Shape) -> tuple[bool, bool, int, int]:
        declared = shape.partition in gpu_listed
        return (shape.gpus > 0, not declared, wanted.index(shape.partition), shape.cpus)

    ordered = sorted(found.values(), key=order)
    return ordered, missing


def _int(value: str | None) -> int:
    try:
        return int(str(value).rstrip("M"))
    except (TypeError, ValueError):
        return 0


def _arch(value: str) -> str:
    return value if value and value != "(null)" else "x86_64"
