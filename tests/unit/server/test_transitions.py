"""How a run's end is recorded: its termination message is one line (issue 13, item 15)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.db.models import Base, JobRow, RunRow, TransitionRow
from dstack.server.services.transitions import MESSAGE_LIMIT, apply_status


@pytest.fixture
def rows() -> Iterator[tuple[Session, RunRow, JobRow]]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        run = RunRow(
            id="r", project_id="p", user_id="u", name="n", submitted_at=0.0, status="running", spec="{}"
        )
        job = JobRow(id="j", run_id="r", status="running", submitted_at=0.0)
        session.add_all([run, job])
        yield session, run, job


def test_a_termination_message_with_line_breaks_is_recorded_as_one_line(
    rows: tuple[Session, RunRow, JobRow],
) -> None:
    session, run, job = rows
    message = "failed to start: docker said\nError: no such image\r\n\tpull it first\x1b[31m" + "x" * 2000
    apply_status(run, job, RunStatus.FAILED, reason=TerminationReason.FAILED_TO_START, message=message)
    assert run.termination_message is not None
    assert "\n" not in run.termination_message and "\r" not in run.termination_message
    assert "\x1b" not in run.termination_message and "\t" not in run.termination_message
    assert run.termination_message.startswith("failed to start: docker said Error: no such image pull it")
    assert len(run.termination_message) <= MESSAGE_LIMIT
    assert job.termination_message == run.termination_message
    session.flush()
    (history,) = session.query(TransitionRow).all()
    assert history.termination_message == run.termination_message


def test_status_messages_are_one_line_too(rows: tuple[Session, RunRow, JobRow]) -> None:
    _, run, job = rows
    apply_status(run, job, RunStatus.PULLING, status_message="Pulling image x\nlayer 3/7")
    assert run.status_message == "Pulling image x layer 3/7"
