"""Running jobs: commands, exit codes, environment, working directory, output."""

from __future__ import annotations

import json
import struct

from agent_testkit import (
    TOKEN,
    AgentClient,
    AgentProcess,
    dir_member,
    file_member,
    job_processes,
    new_job_id,
    wait_for,
)


def test_output_is_read_back_complete_and_in_order(client: AgentClient) -> None:
    job = client.submit(["for i in $(seq 1 1000); do echo line $i; done"])
    # A small page size forces many requests, each continuing from the previous X-Log-End.
    output = client.read_logs(job["id"], limit=997)
    assert output.decode().splitlines() == [f"line {i}" for i in range(1, 1001)]
    state = client.job(job["id"])
    assert state["status"] == "done"
    assert state["exit_code"] == 0
    assert state["reason"] is None
    assert state["log_size"] == len(output)
    assert state["started_at"] <= state["finished_at"]


def test_long_poll_wakes_on_new_output(client: AgentClient) -> None:
    job = client.submit(["sleep 0.5", "echo late", "sleep 1000"])
    client.wait_status(job["id"], ["running"])
    # Blocks until the output arrives; without a wake-up it would return empty after 30 s.
    response = client.request("GET", f"/api/jobs/{job['id']}/logs?offset=0&wait=30")
    assert response.status == 200
    assert response.body == b"late\n"
    assert response.headers["x-job-status"] == "running"
    assert response.headers["x-log-end"] == response.headers["x-log-size"] == "5"
    assert "x-exit-code" not in response.headers
    client.stop(job["id"], abort=True)
    client.wait_final(job["id"])


def test_log_offsets_out_of_range(client: AgentClient) -> None:
    job = client.submit(["echo abc"])
    client.wait_final(job["id"])
    for offset in (-1, 5):
        response = client.request("GET", f"/api/jobs/{job['id']}/logs?offset={offset}")
        assert response.status == 416
        assert response.headers["x-log-size"] == "4"
    response = client.request("GET", f"/api/jobs/{job['id']}/logs?offset=4")
    assert response.status == 200
    assert response.body == b""
    assert response.headers["x-exit-code"] == "0"
    assert response.headers["x-job-status"] == "done"
    assert client.request("GET", f"/api/jobs/{job['id']}/logs?offset=x").status == 400


def test_failing_command_sets_failed_and_its_exit_code(client: AgentClient) -> None:
    job = client.submit(["echo before", "exit 3", "echo after"])
    state = client.wait_final(job["id"])
    assert (state["status"], state["exit_code"]) == ("failed", 3)
    assert "3" in state["reason"]
    assert client.read_logs(job["id"]) == b"before\n"


def test_commands_stop_at_the_first_failure(client: AgentClient) -> None:
    job = client.submit(["echo one", "false", "echo two"])
    state = client.wait_final(job["id"])
    assert (state["status"], state["exit_code"]) == ("failed", 1)
    assert client.read_logs(job["id"]) == b"one\n"


def test_shell_syntax_quotes_pipes_and_blocks(client: AgentClient) -> None:
    commands = [
        """echo "double 'quoted'" && echo 'single "quoted"'""",
        "echo piped | tr a-z A-Z",
        "for x in a b; do\n  echo item $x\ndone",
        "cd /tmp && export CARRIED=yes  # a trailing comment",
        'echo "cwd=$(pwd) carried=$CARRIED"',
        "",
        "true || echo never",
    ]
    job = client.submit(commands)
    state = client.wait_final(job["id"])
    assert state["status"] == "done", client.read_logs(job["id"])
    assert client.read_logs(job["id"]).decode().splitlines() == [
        "double 'quoted'",
        'single "quoted"',
        "PIPED",
        "item a",
        "item b",
        "cwd=/tmp carried=yes",
    ]


def test_trailing_ampersand_runs_in_the_background(client: AgentClient) -> None:
    # The background command finishes after the foreground one: it did not block the shell.
    job = client.submit(["(sleep 0.3; echo background) &", "echo foreground", "wait"])
    state = client.wait_final(job["id"])
    assert state["status"] == "done"
    assert client.read_logs(job["id"]) == b"foreground\nbackground\n"


def test_background_processes_do_not_outlive_the_job(client: AgentClient) -> None:
    job = client.submit(["sleep 1000 &", "setsid sleep 1000 &", "echo started"])
    state = client.wait_final(job["id"])
    assert state["status"] == "done"
    wait_for(lambda: not job_processes(job["id"]), 10, "the job's background processes to end")


def test_environment(client: AgentClient) -> None:
    job = client.submit(
        ["python3 -c 'import json, os; print(json.dumps(dict(os.environ)))'"],
        env={"MY_VAR": "my value", "QUOTED": 'it\'s "here"'},
        run_name="env-run",
    )
    client.wait_final(job["id"])
    env = json.loads(client.read_logs(job["id"]))
    assert env["MY_VAR"] == "my value"
    assert env["QUOTED"] == 'it\'s "here"'
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["DSTACK_JOB_ID"] == job["id"]
    assert env["DSTACK_RUN_NAME"] == "env-run"
    assert "DSTACK_AGENT_TOKEN" not in env
    assert TOKEN not in json.dumps(env)


def test_working_dir_inside_the_code(client: AgentClient, shared_agent: AgentProcess) -> None:
    archive = [dir_member("src"), file_member("src/app.txt", b"app\n"), file_member("top.txt", b"top\n")]
    code_hash = client.upload(archive)
    job = client.submit(["pwd", "cat app.txt", "cat ../top.txt"], code_hash=code_hash, working_dir="src")
    state = client.wait_final(job["id"])
    assert state["status"] == "done", client.read_logs(job["id"])
    code_dir = shared_agent.work_dir / "jobs" / job["id"] / "code"
    assert client.read_logs(job["id"]).decode().splitlines() == [str(code_dir / "src"), "app", "top"]
    # A missing working directory is created.
    job = client.submit(["pwd"], working_dir="new/dir")
    client.wait_final(job["id"])
    assert client.read_logs(job["id"]).decode().strip().endswith("/code/new/dir")


def test_job_without_code_runs_in_an_empty_folder(client: AgentClient) -> None:
    job = client.submit(["ls -A | wc -l"])
    client.wait_final(job["id"])
    assert client.read_logs(job["id"]).strip() == b"0"


def test_duplicate_post_is_idempotent(client: AgentClient) -> None:
    job_id = new_job_id()
    spec = {"id": job_id, "run_name": "r", "commands": ["echo once"]}
    first = client.request("POST", "/api/jobs", body=spec)
    second = client.request("POST", "/api/jobs", body=spec)
    assert (first.status, second.status) == (201, 200)
    assert second.json()["created_at"] == first.json()["created_at"]
    client.wait_final(job_id)
    assert client.read_logs(job_id) == b"once\n"
    conflicting = client.request("POST", "/api/jobs", body={**spec, "commands": ["echo other"]})
    assert conflicting.status == 409
    assert [job["id"] for job in client.get_json("/api/jobs")].count(job_id) == 1


def test_delete_only_finished_jobs(client: AgentClient, shared_agent: AgentProcess) -> None:
    job = client.submit(["sleep 1000"])
    client.wait_status(job["id"], ["running"])
    assert client.request("DELETE", f"/api/jobs/{job['id']}").status == 409
    client.stop(job["id"], abort=True)
    client.wait_final(job["id"])
    assert client.request("DELETE", f"/api/jobs/{job['id']}").status == 204
    assert client.request("GET", f"/api/jobs/{job['id']}").status == 404
    assert client.request("DELETE", f"/api/jobs/{job['id']}").status == 404
    assert not (shared_agent.work_dir / "jobs" / job["id"]).exists()


def test_deleted_folders_are_removed_once_the_agent_is_quiet(
    client: AgentClient, shared_agent: AgentProcess
) -> None:
    jobs_dir = shared_agent.work_dir / "jobs"
    ids = [client.submit(["echo hi"])["id"] for _ in range(3)]
    for job_id in ids:
        client.wait_final(job_id)
        assert client.request("DELETE", f"/api/jobs/{job_id}").status == 204
        # Gone under its name at once (a job with the same id may be created again)...
        assert not (jobs_dir / job_id).exists()
    # ... and its files off the disk soon after the last deletion, nothing left behind.
    wait_for(lambda: not [p for p in jobs_dir.iterdir() if p.name.startswith("~")], 20, "the folders removed")
    assert not {p.name for p in jobs_dir.iterdir()} & set(ids)


def test_timestamps_index_every_chunk(client: AgentClient, shared_agent: AgentProcess) -> None:
    job = client.submit(["echo first", "sleep 0.3", "echo second"])
    client.wait_final(job["id"])
    entries = client.get_json(f"/api/jobs/{job['id']}/timestamps")
    assert entries["more"] is False
    offsets = [offset for offset, _ in entries["entries"]]
    # Two separate writes, 0.3 s apart, can never arrive as one chunk.
    assert offsets == [0, len(b"first\n")]
    times = [at for _, at in entries["entries"]]
    assert times == sorted(times)
    later = client.get_json(f"/api/jobs/{job['id']}/timestamps?offset=1")
    assert [offset for offset, _ in later["entries"]] == [6]
    raw = (shared_agent.work_dir / "jobs" / job["id"] / "output.idx").read_bytes()
    assert [offset for offset, _ in struct.iter_unpack("<Qd", raw)] == offsets


def test_job_that_cannot_start_fails_with_a_reason(client: AgentClient) -> None:
    archive = [file_member("src", b"a file, not a folder")]
    job = client.submit(["true"], code_hash=client.upload(archive), working_dir="src/sub")
    state = client.wait_final(job["id"])
    assert state["status"] == "failed"
    assert state["exit_code"] is None
    assert state["reason"].startswith("Could not create the working directory src/sub")
