"""The scheduling pass leases the jobs it places to this process's supervisors (issue 15: a lone run waits
for no claim transaction), and leaves to the claim loop every job it cannot hand over whole."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from dstack.server.background.scheduling import SchedulingLoop
from dstack.server.db.models import JobRow, RunRow
from dstack.server.events import Notifier
from dstack.server.services import specs


def _loop(*, supervised: bool) -> SchedulingLoop:
    """The pass's claim is pure logic over rows: the end-to-end tests run it against the real database."""
    ctx: Any = SimpleNamespace(notifier=Notifier(), settings=SimpleNamespace(lease_seconds=15.0))
    return SchedulingLoop(ctx, supervise=(lambda token, claimed: None) if supervised else None)


def _placed(run_id: str, lock_expires_at: float | None = None) -> tuple[RunRow, JobRow]:
    return RunRow(id=run_id, name=run_id), JobRow(
        id=f"{run_id}-0", run_id=run_id, lock_expires_at=lock_expires_at
    )


def test_placed_jobs_are_leased_with_their_spec_and_the_rest_left_to_the_claim_loop() -> None:
    now = time.time()
    text = '{"configuration": {"type": "task", "commands": ["echo hi"]}}'
    specs.spec_of("known", text)  # this process read the run's spec (at its submission, say)
    try:
        loop = _loop(supervised=True)
        known, unknown, leased = _placed("known"), _placed("unknown"), _placed("leased", now + 5)
        loop._placed = [known, unknown, leased]
        token, claimed, unclaimed = loop._claim_placed(now)
        assert list(claimed) == ["known-0"]
        run, job = claimed["known-0"]
        assert run.spec == text  # the supervisor reads it without a query
        assert (job.lock_token, job.lock_expires_at) == (token, now + 15.0)
        # No spec at hand, or another worker's unexpired lease: the claim loop's.
        assert unclaimed == 2
        assert unknown[1].lock_token is None and leased[1].lock_token is None
        assert loop._placed == []
    finally:
        specs.forget("known")


def test_without_supervisors_the_pass_claims_nothing() -> None:
    loop = _loop(supervised=False)
    loop._placed = [_placed("a")]
    _, claimed, unclaimed = loop._claim_placed(time.time())
    assert claimed == {} and unclaimed == 1
