"""Stopping jobs: graceful, abort, SIGKILL after the grace, max duration; no process survives."""

from __future__ import annotations

from agent_testkit import AgentClient, job_processes, wait_for


def _assert_no_process_survives(job_id: str) -> None:
    wait_for(lambda: not job_processes(job_id), 10, f"every process of job {job_id} to end")


def test_graceful_stop_ends_the_whole_tree(client: AgentClient) -> None:
    job = client.submit(["sleep 1000 & setsid sleep 1000 &", "sleep 1000 & sleep 1000"])
    client.wait_status(job["id"], ["running"])
    # The four sleeps (one of them in its own session) are all up.
    wait_for(lambda: len(job_processes(job["id"])) >= 5, 10, "the job's processes to start")
    response = client.stop(job["id"])
    assert response.status == 202
    state = client.wait_final(job["id"])
    assert state["status"] == "terminated"
    assert state["reason"] == "Stopped by request"
    assert state["exit_code"] == 128 + 15
    _assert_no_process_survives(job["id"])


def test_abort_kills_at_once(client: AgentClient) -> None:
    # A foreground sleep: whichever of bash and sleep the SIGKILL reaches first, bash ends with 137.
    job = client.submit(["trap 'echo ignored' TERM", "sleep 1000"], stop_grace_seconds=600)
    client.wait_status(job["id"], ["running"])
    assert client.stop(job["id"], abort=True).status == 202
    state = client.wait_final(job["id"])
    assert (state["status"], state["reason"], state["exit_code"]) == ("terminated", "Aborted", 128 + 9)
    _assert_no_process_survives(job["id"])


def test_task_ignoring_sigterm_gets_sigkill_after_the_grace(client: AgentClient) -> None:
    job = client.submit(["trap '' TERM", "echo ready", "sleep 1000"])
    client.wait_status(job["id"], ["running"])
    wait_for(lambda: client.job(job["id"])["log_size"] > 0, 10, "the trap to be set")
    assert client.stop(job["id"], grace_seconds=0.5).status == 202
    state = client.wait_final(job["id"])
    assert state["status"] == "terminated"
    assert state["exit_code"] == 128 + 9  # it survived SIGTERM: only SIGKILL ended it
    _assert_no_process_survives(job["id"])


def test_abort_escalates_a_graceful_stop(client: AgentClient) -> None:
    job = client.submit(["trap '' TERM", "echo ready", "sleep 1000"], stop_grace_seconds=600)
    wait_for(lambda: client.job(job["id"])["log_size"] > 0, 10, "the trap to be set")
    assert client.stop(job["id"]).status == 202
    assert client.stop(job["id"], abort=True).status == 202
    state = client.wait_final(job["id"])
    assert (state["status"], state["reason"], state["exit_code"]) == ("terminated", "Aborted", 128 + 9)


def test_max_duration(client: AgentClient) -> None:
    job = client.submit(["echo started", "sleep 1000"], max_duration=1)
    state = client.wait_final(job["id"])
    assert (state["status"], state["reason"]) == ("terminated", "Max duration exceeded")
    # bash may report its killed child ("Terminated") when the signal reaches the child first.
    assert client.read_logs(job["id"]) in (b"started\n", b"started\nTerminated\n")
    _assert_no_process_survives(job["id"])


def test_stopping_a_finished_job_is_a_no_op(client: AgentClient) -> None:
    job = client.submit(["exit 0"])
    before = client.wait_final(job["id"])
    response = client.stop(job["id"], abort=True)
    assert response.status == 200
    assert response.json() == before


def test_stop_right_after_submit_never_leaves_a_process(client: AgentClient) -> None:
    # Whether the stop lands while the job is preparing or just started, it ends terminated.
    job = client.submit(["sleep 1000"])
    client.stop(job["id"])
    state = client.wait_final(job["id"])
    assert (state["status"], state["reason"]) == ("terminated", "Stopped by request")
    _assert_no_process_survives(job["id"])


def test_stop_validation(client: AgentClient) -> None:
    job = client.submit(["true"])
    for body in ({"abort": "yes"}, {"grace_seconds": -1}, {"force": True}, [1]):
        response = client.request("POST", f"/api/jobs/{job['id']}/stop", body=body)
        assert response.status == 400, body
    assert client.request("POST", "/api/jobs/missing/stop", body={}).status == 404
