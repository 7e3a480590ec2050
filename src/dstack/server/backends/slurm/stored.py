"""What the Slurm backend keeps on the server's disk (under ~/.dstack/server/slurm/, the owner's only):
the secret its per-job agent tokens derive from, the node shapes it has listed (a job placed on one is
found again after a restart, even while its cluster does not answer), and the Slurm jobs still to cancel
once their login node answers again."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict
from pathlib import Path

from dstack.core.private import write_private
from dstack.server.backends.slurm.inventory import Shape


def load_shapes(path: Path) -> dict[str, Shape]:
    try:
        return {s["name"]: Shape(**s["shape"]) for s in json.loads(path.read_text())}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def save_shapes(path: Path, found: dict[str, Shape]) -> None:
    write_private(path, [{"name": name, "shape": asdict(shape)} for name, shape in found.items()])


def read_or_create_secret(path: Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex())
        return secret


class Orphans:
    """Slurm jobs to cancel once their login node answers again (a run ended while it did not)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._ids: dict[str, list[str]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._ids = {}

    def of(self, cluster: str) -> list[str]:
        return list(self._ids.get(cluster, []))

    def add(self, cluster: str, slurm_id: str) -> None:
        ids = self._ids.setdefault(cluster, [])
        if slurm_id not in ids:
            ids.append(slurm_id)
            self._save()

    def remove(self, cluster: str, slurm_id: str) -> None:
        if slurm_id in self._ids.get(cluster, []):
            self._ids[cluster].remove(slurm_id)
            self._save()

    def _save(self) -> None:
        write_private(self._path, self._ids)
