"""A smoke test that large output moves through the agent whole (speed is measured in bench/, not here)."""

from __future__ import annotations

from agent_testkit import AgentClient

X_BYTES = 200_000_000
LINE = 99


def test_200_megabytes_of_output_read_back_fully(client: AgentClient) -> None:
    job = client.submit([f"head -c {X_BYTES} /dev/zero | tr '\\0' 'x' | fold -w {LINE}"])
    counts = {"bytes": 0, "x": 0, "newlines": 0}

    def count(chunk: bytes) -> None:
        counts["bytes"] += len(chunk)
        counts["x"] += chunk.count(b"x")
        counts["newlines"] += chunk.count(b"\n")

    client.read_logs(job["id"], limit=16 * 1024 * 1024, timeout=120, sink=count)
    state = client.job(job["id"])
    assert state["status"] == "done"
    assert counts["x"] == X_BYTES
    # fold breaks after every full line of 99 characters that has more after it.
    assert counts["newlines"] == X_BYTES // LINE
    assert counts["bytes"] == state["log_size"] == X_BYTES + X_BYTES // LINE
