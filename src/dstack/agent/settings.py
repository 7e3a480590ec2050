"""The agent's command line and settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

TOKEN_ENV = "DSTACK_AGENT_TOKEN"  # noqa: S105 - the variable's name, not a secret
DEFAULT_MAX_CODE_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class AgentSettings:
    work_dir: Path
    host: str
    port: int
    idle_exit_seconds: float  # 0 = never
    max_code_bytes: int
    token: str
    pass_env: Tuple[str, ...] = ()  # host variables jobs see beyond jobenv.HOST_VARIABLES
    job_umask: int = 0o022  # the agent's own files are private (umask 077); jobs get the user's
    # Serve one job, then exit with its exit code (an agent started for one allocation, e.g. a Slurm job):
    # once the server has collected it, or `linger_seconds` after it ended if nobody does.
    one_job: bool = False
    linger_seconds: float = 300.0


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dstack.agent",
        description="Run the jobs a dstack server hands to this host. The API token is read from the "
        f"{TOKEN_ENV} environment variable (or stdin). SIGTERM stops the jobs and exits; SIGUSR1 exits "
        "and leaves them running for the next agent to take over.",
    )
    parser.add_argument(
        "--job-umask",
        type=_umask,
        default=None,
        metavar="OCTAL",
        help="the umask of the jobs' processes (default: the umask the agent was started with; the agent "
        "itself uses 077)",
    )
    parser.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="a host variable (or a pattern such as HF_*) that jobs see too; the default list is in "
        "dstack/agent/jobenv.py (repeatable)",
    )
    parser.add_argument("--work-dir", required=True, type=Path, help="folder for code, jobs and their output")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", default=0, type=_port, help="port to listen on (default: 0, any free port)")
    parser.add_argument(
        "--idle-exit",
        default=0.0,
        type=_non_negative,
        metavar="SECONDS",
        help="exit after this long with no job running and no request (default: 0, never)",
    )
    parser.add_argument(
        "--token-stdin",
        action="store_true",
        help=f"read the API token from the first line of stdin instead of {TOKEN_ENV}",
    )
    parser.add_argument(
        "--one-job",
        action="store_true",
        help="serve one job, then exit with its exit code once the server has collected it (deleted it); "
        "a signal stops the job and still waits for the server to collect it",
    )
    parser.add_argument(
        "--linger",
        default=300.0,
        type=_non_negative,
        metavar="SECONDS",
        help="with --one-job: exit this long after the job ended even if nobody collected it (default: 300)",
    )
    parser.add_argument(
        "--max-code-bytes",
        default=DEFAULT_MAX_CODE_BYTES,
        type=int,
        metavar="BYTES",
        help="largest code archive accepted (default: 2 GiB)",
    )
    return parser.parse_args(argv)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def _umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an octal umask such as 022") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError("must be an octal umask from 000 to 777")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value
