"""The `slurm` backend: a Slurm cluster's partitions as offers, each run one Slurm job (see backend.py)."""

from dstack.server.backends.slurm.backend import SlurmBackend

__all__ = ["SlurmBackend"]
