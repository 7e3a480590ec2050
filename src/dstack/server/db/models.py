"""Database tables. Times are unix seconds (float): portable across SQLite and PostgreSQL, cheap to compare.

Schema changes go through an Alembic migration in `migrations/versions/`.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Only a hash is stored: a leaked database does not leak usable tokens.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[float] = mapped_column(Float)


class MemberRow(Base):
    __tablename__ = "members"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="user")


class CodeRow(Base):
    """A code archive the project uploaded; the bytes live in server_dir/code/<hash>.tar."""

    __tablename__ = "code"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class FleetRow(Base):
    """A fleet of the user's own hosts (`type: fleet`), applied to a project; its hosts are HostRows."""

    __tablename__ = "fleets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    configuration: Mapped[str] = mapped_column(Text)  # JSON: the FleetConfiguration as applied
    placement: Mapped[str] = mapped_column(String(16), default="any")  # any | cluster
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | deleting
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("project_id", "name"),)


class HostRow(Base):
    """A machine a backend can run jobs on, with the agent that runs them there."""

    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    resources: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the agent's fingerprint + declared
    price: Mapped[float] = mapped_column(Float, default=0.0)
    # unknown | ready | unavailable (local); ready | unreachable | failed | removed (fleet hosts)
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    last_seen_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Fleet hosts (backend ssh): their fleet, how the server reaches them, the agent's own token, why
    # they are not ready, and the address the fleet's hosts reach each other on (multi-node).
    fleet_id: Mapped[str | None] = mapped_column(ForeignKey("fleets.id"), nullable=True)
    ssh: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: hostname, port, user, key, jump
    agent_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    address: Mapped[str | None] = mapped_column(String(256), nullable=True)

    __table_args__ = (UniqueConstraint("backend", "name"),)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str | None] = mapped_column(Text, nullable=True)  # e.g. why it waits
    termination_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    termination_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    spec: Mapped[str] = mapped_column(Text)  # JSON RunSpec as validated at submission
    configuration_path: Mapped[str | None] = mapped_column(String(256), nullable=True)  # for `ps`
    # Where and how it runs, denormalised for `ps` (one query, no joins).
    backend: Mapped[str | None] = mapped_column(String(32), nullable=True)
    resources: Mapped[str | None] = mapped_column(String(256), nullable=True)
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Retry window end (unix seconds) for runs waiting for capacity; None = no retry.
    retry_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_requested: Mapped[str | None] = mapped_column(String(16), nullable=True)  # stop | abort
    # 0-100 (`priority:`): waiting runs are placed highest first, then in submission order.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # For runs with a `schedule` (JSON list of cron expressions, UTC): when it starts next (unix seconds);
    # it waits until then, and after each end it waits for the next start (a new job), until stopped.
    schedule: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_start_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Where it runs as its backend names it, for `ps -v` (e.g. "slurm job 123 on node1").
    instance: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # How many nodes (jobs per submission) it runs on: `ps` shows a multi-node run's nodes without its spec.
    nodes: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index("ix_runs_project_submitted", "project_id", "submitted_at"),
        Index("ix_runs_status", "status"),
    )


class JobRow(Base):
    """One submission of one node of a run on a host. A run has one job per node and submission; job_num is
    the node's rank (0 = the master node)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    submission_num: Mapped[int] = mapped_column(Integer, default=0)
    job_num: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16))
    submitted_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    allocation: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: what it holds on its host
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    termination_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    termination_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the backend created for this job (a Slurm job id): a resubmission after a crash finds it.
    instance_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Where the node runs as users know it (a fleet host, a Slurm node), and the address the other nodes of
    # its run reach it on (DSTACK_NODES_IPS); set at placement, or by the backend's launch.
    hostname: Mapped[str | None] = mapped_column(String(128), nullable=True)
    address: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # Row lease: a worker owns the row while lock_expires_at is in the future and lock_token is its own.
    lock_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lock_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_jobs_run", "run_id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_host_status", "host_id", "status"),
    )


class TransitionRow(Base):
    """One change of a run's status (or of its status message), in order: the run's history.

    Written by `services/transitions.py` only, in the transaction that changes the status. The first entry
    of every run is `submitted`, at its submission time.
    """

    __tablename__ = "run_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    termination_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    termination_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (Index("ix_run_transitions_run", "run_id", "id"),)


class UISessionRow(Base):
    """A web UI sign-in: a browser session (`session`) or a one-time sign-in code (`code`).

    Only hashes are stored, as for tokens; a code is deleted when it is exchanged for a session.
    """

    __tablename__ = "ui_sessions"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # session | code
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str | None] = mapped_column(String(64), nullable=True)  # sessions only
    # The user's token hash when it was made: a new token (a leaked one replaced) ends every UI sign-in.
    token_hash: Mapped[str] = mapped_column(String(64))
    project: Mapped[str | None] = mapped_column(String(64), nullable=True)  # codes: the page to open
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class SecretRow(Base):
    """A project's secret (`dstack secret set`), resolved into runs' env and registry_auth on the server.

    The value never leaves the server except to the agent of a job that references it; the database lives
    in the server's folder, which only its owner can read.
    """

    __tablename__ = "secrets"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RunTokenRow(Base):
    """A token given to a run with `dstack: true`: it acts in the run's project only, while the run is
    unfinished, and cannot manage secrets. Only its hash is stored."""

    __tablename__ = "run_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_run_tokens_run", "run_id"),)


class LockRow(Base):
    """Named locks held for one transaction (SELECT ... FOR UPDATE), e.g. "scheduler": on PostgreSQL two
    server replicas then never run a scheduling pass at once (SQLite's single writer already ensures it)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
