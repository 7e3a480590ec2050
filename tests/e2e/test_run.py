"""`dstack run` end to end: the real CLI, the embedded server it starts, and the real agent."""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

from tests.e2e.harness import DstackEnv, pids_with_env, wait_for

TRAIN_EXAMPLE = """\
type: task

python: "3.11" # (Optional) If not specified, your local version is used.

commands:
  - pip install -r requirements.txt
  - python train.py
"""

TRAIN_PY = """\
import sys
for epoch in range(3):
    print(f"Epoch {epoch}: loss={1 / (epoch + 1):.3f}")
print("python", sys.version_info[:2])
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def task(project: Path, commands: list[str], name: str = ".dstack.yml", extra: str = "") -> Path:
    body = "type: task\n" + extra + "commands:\n" + "".join(f"  - {_quote(c)}\n" for c in commands)
    return write(project / name, body)


def _quote(command: str) -> str:
    return "'" + command.replace("'", "''") + "'"


def run_name(result_stdout: str) -> str:
    return result_stdout.strip().splitlines()[-1]


def test_the_tasks_guide_example_runs_end_to_end(dstack_env: DstackEnv, project_dir: Path) -> None:
    write(project_dir / "train.dstack.yml", TRAIN_EXAMPLE)
    write(project_dir / "requirements.txt", "# nothing to install\n")
    write(project_dir / "train.py", TRAIN_PY)
    # As the guide types it: no -y, so the plan is confirmed at the prompt.
    result = dstack_env.run(
        "run",
        ".",
        "-f",
        "train.dstack.yml",
        cwd=project_dir,
        input="y\n",
        env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Started a dstack server in the background" in result.stderr
    assert "Continue? [y/n]" in result.stderr
    assert "local" in result.stderr  # the plan's offer
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("Epoch")] == [
        "Epoch 0: loss=1.000",
        "Epoch 1: loss=0.500",
        "Epoch 2: loss=0.333",
    ]
    assert "python (3, 11)" in lines
    ps = dstack_env.run("ps", "-a", check=True)
    assert "train.dstack.yml" in ps.stdout and "done" in ps.stdout
    # The server started by the first command is reused: no second "Started" line.
    again = dstack_env.run("ps", check=True)
    assert "Started" not in again.stderr


def test_output_streams_while_the_task_runs(dstack_env: DstackEnv, project_dir: Path) -> None:
    gate = dstack_env.home / f"gate-{uuid.uuid4().hex}"
    task(project_dir, ["echo first line", f"while [ ! -e {gate} ]; do sleep 0.05; done", "echo last line"])
    process = dstack_env.popen("run", ".", "-y", cwd=project_dir)
    try:
        assert process.stdout is not None
        # The first line must arrive while the task is still blocked on the gate.
        assert process.stdout.readline().strip() == "first line"
        gate.touch()
        rest = process.stdout.read()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert rest.strip() == "last line"


def test_a_failing_command_exit_code_becomes_the_cli_exit_code(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    task(project_dir, ["echo before", "exit 7", "echo never"])
    result = dstack_env.run("run", ".", "-y", "-n", "failing-run", cwd=project_dir)
    assert result.returncode == 7
    assert result.stdout.splitlines() == ["before"]
    assert "commands failed with exit code 7" in result.stderr
    ps = dstack_env.run("ps", "-a", "-v", check=True)
    row = next(line for line in ps.stdout.splitlines() if "failing-run" in line)
    assert "failed" in row and "commands failed with exit code 7" in row


def test_detach_then_follow_logs_then_read_them_again(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["for i in $(seq 1 30); do echo line $i; sleep 0.02; done"])
    submitted = dstack_env.run("run", ".", "-y", "-d", cwd=project_dir, check=True)
    name = run_name(submitted.stdout)
    followed = dstack_env.run("logs", "-f", name, check=True)
    expected = [f"line {i}" for i in range(1, 31)]
    assert followed.stdout.splitlines() == expected
    assert dstack_env.run("logs", name, check=True).stdout.splitlines() == expected
    assert dstack_env.run("logs", name, "--tail", "2", check=True).stdout.splitlines() == expected[-2:]


def test_stop_ends_the_whole_process_tree(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["sleep 1000 &", "setsid sleep 1001 &", "echo started", "sleep 1002"])
    name = run_name(
        dstack_env.run("run", ".", "-y", "-d", "-n", "stop-me", cwd=project_dir, check=True).stdout
    )
    wait_for(lambda: "started" in dstack_env.run("logs", name).stdout, timeout=60, what="the task to start")
    marker = f"DSTACK_RUN_NAME={name}"
    assert len(pids_with_env(marker)) >= 4  # bash, two background sleeps, the foreground sleep
    stopped = dstack_env.run("stop", name, "-y", check=True)
    assert "Stopped" in stopped.stderr
    wait_for(lambda: not pids_with_env(marker), timeout=30, what="the task's processes to end")
    ps = dstack_env.run("ps", "-a", "-v", check=True)
    row = next(line for line in ps.stdout.splitlines() if name in line)
    assert "terminated" in row and "stopped by user" in row


def test_a_task_survives_a_killed_server_and_its_output_is_complete(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    task(project_dir, ["for i in $(seq 1 60); do echo line $i; sleep 0.1; done"])
    name = run_name(dstack_env.run("run", ".", "-y", "-d", cwd=project_dir, check=True).stdout)
    wait_for(lambda: "line 3" in dstack_env.run("logs", name).stdout, timeout=60, what="some output")
    server = dstack_env.server_pid()
    assert server is not None
    os.kill(server, signal.SIGKILL)
    # The next command finds the embedded server gone, starts it again, and the new one picks the task up.
    followed = dstack_env.run("logs", "-f", name, timeout=120)
    assert followed.returncode == 0, followed.stderr
    assert "Restarted a dstack server" in followed.stderr
    assert followed.stdout.splitlines() == [f"line {i}" for i in range(1, 61)]
    assert dstack_env.run("logs", name, check=True).stdout.splitlines() == [f"line {i}" for i in range(1, 61)]
    ps = dstack_env.run("ps", "-a", check=True)
    assert re.search(rf"{name}\s.*\sdone\s", ps.stdout)


def test_run_args_are_passed_shell_quoted(dstack_env: DstackEnv, project_dir: Path) -> None:
    canary = dstack_env.home / "pwned"
    task(project_dir, ['printf "[%s]\\n" ${{ run.args }}', "echo name=${{ run.name }}"])
    result = dstack_env.run(
        "run",
        ".",
        "-y",
        "-n",
        "args-run",
        "--epochs=3",
        "--",
        f"$(touch {canary})",
        "a b",
        ";ls",
        cwd=project_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[--epochs=3]",
        f"[$(touch {canary})]",
        "[a b]",
        "[;ls]",
        "name=args-run",
    ]
    assert not canary.exists()


def test_code_upload_honours_ignore_files_and_is_not_repeated(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    os.system(f"git -C {project_dir} init -q")
    write(project_dir / ".gitignore", "secret.txt\n")
    write(project_dir / ".dstackignore", "data/\n")
    write(project_dir / "secret.txt", "s3cret")
    write(project_dir / "data" / "big.bin", "x" * 1000)
    write(project_dir / "src" / "main.py", "print('hi')")
    task(project_dir, ["find . -path ./src/__pycache__ -prune -o -print | sort"])
    first = dstack_env.run("run", ".", "-y", cwd=project_dir)
    assert first.returncode == 0, first.stderr
    assert "Uploading the code" in first.stderr
    files = set(first.stdout.split())
    assert {"./src/main.py", "./.gitignore", "./.dstackignore", "./.dstack.yml"} <= files
    assert not any(f.startswith(("./secret", "./data", "./.git/")) or f == "./.git" for f in files)
    second = dstack_env.run("run", ".", "-y", cwd=project_dir)
    assert second.returncode == 0, second.stderr
    assert "Uploading the code" not in second.stderr  # unchanged code: nothing sent


def test_the_task_works_in_a_private_copy_of_the_code(dstack_env: DstackEnv, project_dir: Path) -> None:
    write(project_dir / "notes.txt", "original")
    task(project_dir, ["echo changed > notes.txt", "cat notes.txt", "pwd"])
    result = dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)
    assert result.stdout.splitlines()[0] == "changed"
    assert result.stdout.splitlines()[1] != str(project_dir)
    assert (project_dir / "notes.txt").read_text() == "original"


def test_code_over_the_size_limit_is_refused_naming_the_biggest_files(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    write(project_dir / "weights.bin", "x" * (3 * 1024 * 1024))
    task(project_dir, ["true"])
    result = dstack_env.run("run", ".", "-y", cwd=project_dir, env={"DSTACK_CODE_LIMIT_MB": "1"})
    assert result.returncode == 1
    assert "weights.bin" in result.stderr and ".dstackignore" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(dstack_env.run("ps", "-a", check=True).stdout.strip().splitlines()) == 1  # headers only


def test_working_dir_and_env(dstack_env: DstackEnv, project_dir: Path) -> None:
    write(project_dir / "src" / "hello.txt", "hello from src\n")
    task(
        project_dir,
        ["cat hello.txt", "echo $MODE $TOKEN $EXTRA"],
        extra="working_dir: src\nenv:\n  - MODE=fast\n  - TOKEN\n",
    )
    result = dstack_env.run("run", ".", "-y", "-e", "EXTRA=x y", cwd=project_dir, env={"TOKEN": "t0k"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello from src", "fast t0k x y"]


def test_a_killed_agent_is_started_again_for_the_next_run(dstack_env: DstackEnv, project_dir: Path) -> None:
    import json

    task(project_dir, ["echo first"])
    assert dstack_env.run("run", ".", "-y", cwd=project_dir, check=True).stdout.strip() == "first"
    agent_file = dstack_env.home / ".dstack" / "server" / "agents" / "local" / "agent.json"
    old_pid = int(json.loads(agent_file.read_text())["pid"])
    os.kill(old_pid, signal.SIGKILL)
    wait_for(
        lambda: (
            not Path(f"/proc/{old_pid}/status").exists()
            or "zombie" in Path(f"/proc/{old_pid}/status").read_text()
        ),
        timeout=10,
        what="the agent to die",
    )
    task(project_dir, ["echo second"])
    # The server's cached view of the host may still be fresh: either way the run must find a live agent.
    result = dstack_env.run("run", ".", "-y", cwd=project_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "second"
    assert int(json.loads(agent_file.read_text())["pid"]) != old_pid
