"""How a run's end is recorded: its termination message is one line (issue 13, item 15)."""

from __future__ import annotations

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.db.models import JobRow, RunRow
from dstack.server.services.transitions import MESSAGE_LIMIT, apply_status


def test_a_termination_message_with_line_breaks_is_recorded_as_one_line() -> None:
    run, job = RunRow(status="running"), JobRow(status="running")
    message = "failed to start: docker said\nError: no such image\r\n\tpull it first\x1b[31m" + "x" * 2000
    apply_status(run, job, RunStatus.FAILED, reason=TerminationReason.FAILED_TO_START, message=message)
    assert run.termination_message is not None
    assert "\n" not in run.termination_message and "\r" not in run.termination_message
    assert "\x1b" not in run.termination_message and "\t" not in run.termination_message
    assert run.termination_message.startswith("failed to start: docker said Error: no such image pull it")
    assert len(run.termination_message) <= MESSAGE_LIMIT
    assert job.termination_message == run.termination_message


def test_status_messages_are_one_line_too() -> None:
    run, job = RunRow(status="provisioning"), JobRow(status="provisioning")
    apply_status(run, job, RunStatus.PULLING, status_message="Pulling image x\nlayer 3/7")
    assert run.status_message == "Pulling image x layer 3/7"
