"""How a multi-node run's status follows its nodes: the least advanced node shows, a failed node (or the
master under master-done) stops the others, and the run ends once every node has, the first failure
naming its node. Rows of a real (in-memory) database session, as the server's."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dstack.core.statuses import RunStatus, TerminationReason
from dstack.server.background.nodes import cluster_of, waits_for
from dstack.server.db.models import Base, JobRow, ProjectRow, RunRow, TransitionRow, UserRow
from dstack.server.services.transitions import NODE_ENDED, STOP, end_node, end_run, move_node


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(UserRow(id="u", name="u", token_hash="t", created_at=0))
        s.add(ProjectRow(id="p", name="p", owner_id="u", created_at=0))
        yield s


def make_run(session: Session, nodes: int = 2) -> tuple[RunRow, list[JobRow]]:
    run = RunRow(
        id="r",
        project_id="p",
        user_id="u",
        name="r",
        submitted_at=0,
        status="provisioning",
        spec="{}",
        nodes=nodes,
    )
    jobs = [
        JobRow(
            id=f"j{i}",
            run_id="r",
            job_num=i,
            status="provisioning",
            submitted_at=0,
            hostname=f"host{i}",
            address=f"10.0.0.{i + 1}",
            allocation=json.dumps({"gpus": [0, 1]}),
        )
        for i in range(nodes)
    ]
    session.add(run)
    session.flush()
    session.add_all(jobs)
    session.flush()
    return run, jobs


def history(session: Session) -> list[tuple[str, str | None]]:
    session.flush()
    rows = session.execute(select(TransitionRow).order_by(TransitionRow.id)).scalars()
    return [(r.status, r.status_message) for r in rows]


def test_the_run_shows_its_least_advanced_node(session: Session) -> None:
    run, (master, worker) = make_run(session)
    move_node(run, master, [master, worker], RunStatus.RUNNING)
    assert (run.status, master.status, worker.status) == ("provisioning", "running", "provisioning")
    move_node(run, worker, [master, worker], RunStatus.PULLING, status_message="Pulling image x")
    assert (run.status, run.status_message) == ("pulling", "Pulling image x")
    move_node(run, worker, [master, worker], RunStatus.RUNNING)
    assert run.status == "running" and master.started_at is not None and worker.started_at is not None


def test_a_failed_worker_stops_the_master_and_the_run_fails_naming_it(session: Session) -> None:
    run, (master, worker) = make_run(session)
    for job in (master, worker):
        move_node(run, job, [master, worker], RunStatus.RUNNING)
    following, stops = end_node(
        run, worker, [master, worker], RunStatus.FAILED, reason=TerminationReason.COMMANDS_FAILED, exit_code=1
    )
    assert following == [] and stops
    assert run.stop_requested == NODE_ENDED
    assert run.status == "terminating"  # not finished while the master's processes may still run
    assert (
        run.status_message
        == "node 1 (host1) failed: commands failed with exit code 1; stopping the other nodes"
    )
    end_node(
        run, master, [master, worker], RunStatus.TERMINATED, reason=TerminationReason.TERMINATED_BY_SERVER
    )
    assert (run.status, run.termination_reason, run.exit_code) == ("failed", "commands_failed", 1)
    assert run.termination_message == "node 1 (host1): commands failed with exit code 1"
    assert master.termination_message == (
        "terminated by the server: node 1 (host1) failed: commands failed with exit code 1"
    )
    assert [s for s, _ in history(session)] == ["running", "terminating", "failed"]


def test_master_done_ends_the_run_done_under_master_done(session: Session) -> None:
    run, (master, worker) = make_run(session)
    _, stops = end_node(
        run, master, [master, worker], RunStatus.DONE, exit_code=0, stop_criteria="master-done"
    )
    assert stops and run.stop_requested == NODE_ENDED and run.status == "terminating"
    end_node(
        run, worker, [master, worker], RunStatus.TERMINATED, reason=TerminationReason.TERMINATED_BY_SERVER
    )
    assert (run.status, run.exit_code, run.termination_reason) == ("done", 0, None)


def test_all_done_waits_for_every_node(session: Session) -> None:
    run, (master, worker) = make_run(session)
    for job in (master, worker):
        move_node(run, job, [master, worker], RunStatus.RUNNING)
    _, stops = end_node(run, master, [master, worker], RunStatus.DONE, exit_code=0)
    assert not stops and run.stop_requested is None and run.status == "running"
    end_node(run, worker, [master, worker], RunStatus.DONE, exit_code=0)
    assert run.status == "done"


def test_a_user_stop_ends_every_node_as_stopped(session: Session) -> None:
    run, (master, worker) = make_run(session)
    run.stop_requested = STOP
    _, stops = end_node(
        run, master, [master, worker], RunStatus.TERMINATED, reason=TerminationReason.STOPPED_BY_USER
    )
    assert not stops
    end_node(run, worker, [master, worker], RunStatus.TERMINATED, reason=TerminationReason.STOPPED_BY_USER)
    assert (run.status, run.termination_reason) == ("terminated", "stopped_by_user")


def test_a_run_that_cannot_be_placed_ends_with_every_node(session: Session) -> None:
    run, jobs = make_run(session)
    for job in jobs:
        job.status = "submitted"
    end_run(
        run, jobs, RunStatus.FAILED, reason=TerminationReason.NO_CAPACITY, message="No offer fits 2 nodes."
    )
    assert [j.status for j in jobs] == ["failed", "failed"]
    assert (run.status, run.termination_message) == ("failed", "No offer fits 2 nodes.")


def test_startup_order_decides_who_waits() -> None:
    master = JobRow(id="a", job_num=0, status="provisioning")
    worker = JobRow(id="b", job_num=1, status="provisioning")
    nodes = [master, worker]
    assert waits_for("any", 1, nodes) is None
    assert waits_for("master-first", 0, nodes) is None
    assert (
        waits_for("master-first", 1, nodes)
        == "Waiting for the master node to start (startup_order: master-first)"
    )
    assert waits_for("workers-first", 1, nodes) is None
    assert (
        waits_for("workers-first", 0, nodes)
        == "Waiting for the worker node to start (startup_order: workers-first)"
    )
    master.status = "running"
    assert waits_for("master-first", 1, nodes) is None
    worker.status = "failed"  # ended: nobody waits for it (the run stops anyway)
    assert waits_for("workers-first", 0, nodes) is None


def test_every_node_gets_the_addresses_and_gpus_of_the_run() -> None:
    nodes = [
        JobRow(id="a", job_num=0, address="10.0.0.1", allocation=json.dumps({"gpus": [0, 1]})),
        JobRow(id="b", job_num=1, address="10.0.0.2", allocation=json.dumps({"gpus": [2, 3]})),
    ]
    cluster = cluster_of(nodes, 1, 2)
    assert cluster.env() == {
        "DSTACK_NODES_NUM": "2",
        "DSTACK_NODE_RANK": "1",
        "DSTACK_MASTER_NODE_IP": "10.0.0.1",
        "DSTACK_NODES_IPS": "10.0.0.1\n10.0.0.2",
        "DSTACK_GPUS_PER_NODE": "2",
        "DSTACK_GPUS_NUM": "4",
    }
    assert cluster.hostfile() == "10.0.0.1 slots=2\n10.0.0.2 slots=2\n"
    # A backend that learns its nodes' addresses at launch (Slurm) gives them.
    assert (
        cluster_of(nodes, 0, 2, ["192.168.1.5", "192.168.1.6"]).env()["DSTACK_MASTER_NODE_IP"]
        == "192.168.1.5"
    )
