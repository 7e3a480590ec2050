"""Limits shared by the CLI, the server and the agent. The agent is standard library only and imports
nothing of the rest of dstack, so it keeps its own copy of what it enforces; tests keep the two equal."""

from __future__ import annotations

# The largest JSON request body the agent reads (dstack.agent.httpserver.MAX_JSON_BYTES): a job spec
# bigger than this is refused by the host, so the server refuses it at submission, and the CLI earlier.
JOB_SPEC_LIMIT_BYTES = 1024 * 1024


def spec_too_big(size: int) -> str:
    """The sentence for a run whose commands, env and build do not fit in what a host takes."""
    return (
        f"The run is too big for a host: its commands, env and build take {size / 1024:.0f} KB, over the "
        f"{JOB_SPEC_LIMIT_BYTES // 1024} KB a host takes; put big values in files of the code instead"
    )
