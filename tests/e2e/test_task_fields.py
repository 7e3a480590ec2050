"""Today's dstack's task fields, end to end through the real `dstack` command, on processes (no image).

What a user relies on: a volume's file is visible in the task, a `files` mapping is present before the
commands start, a repo cloned from a URL is at its hash, `entrypoint` replaces the shell, `setup` runs
first, `shell` is honoured, `stop_duration` gives a stopping task its time, secrets reach the env and are
never shown back, and `dstack: true` gives the task a token for its own project only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.runkit import api_client, run_json, status, write

pytestmark = pytest.mark.e2e


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def make_repo(path: Path) -> tuple[str, str]:
    """A repository with two commits; returns their hashes (first, second)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    write(path / "version.txt", "one\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "one")
    first = git(path, "rev-parse", "HEAD")
    write(path / "version.txt", "two\n")
    git(path, "commit", "-q", "-am", "two")
    return first, git(path, "rev-parse", "HEAD")


def run(env: DstackEnv, project: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return env.run("run", ".", "-y", *args, cwd=project, timeout=timeout)


def test_volume_files_repo_setup_and_shell_reach_a_process_task(
    dstack_env: DstackEnv, project_dir: Path, tmp_path: Path
) -> None:
    volume = write(tmp_path / "volume" / "shared.txt", "from the volume\n").parent
    write(dstack_env.home / "secrets" / "token.txt", "from the home folder\n")
    write(project_dir / "conf" / "a.yml", "a: 1\n")
    write(project_dir / "conf" / ".dstackignore", "skipped.txt\n")
    write(project_dir / "conf" / "skipped.txt", "must not travel\n")
    first, _ = make_repo(tmp_path / "upstream")
    write(
        project_dir / ".dstack.yml",
        "type: task\n"
        "shell: sh\n"
        "setup:\n  - echo setup-first\n"
        "commands:\n"
        "  - echo bash=${BASH_VERSION:-none}\n"
        "  - echo volume=$(cat data/shared.txt)\n"
        "  - echo home-file=$(cat token.txt)\n"
        "  - echo conf=$(cat config/a.yml) skipped=$(ls config/skipped.txt 2>/dev/null || echo none)\n"
        "  - echo repo=$(cat lib/version.txt) at=$(git -C lib rev-parse HEAD)\n"
        f"volumes:\n  - {volume}:/data\n"
        "files:\n  - ~/secrets/token.txt:token.txt\n  - conf:config\n"
        f"repos:\n  - url: file://{tmp_path / 'upstream'}\n    hash: {first}\n    path: lib\n",
    )
    result = run(dstack_env, project_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "setup-first"  # the deprecated spelling still runs, before the commands
    assert "bash=none" in lines  # sh ran the commands, not bash
    assert "volume=from the volume" in lines  # the host folder, as ./data (a process has no /data)
    assert "home-file=from the home folder" in lines  # `~` is the user's home, on the CLI's side
    assert "conf=a: 1 skipped=none" in lines  # the folder's own .dstackignore is honoured
    assert f"repo=one at={first}" in lines  # cloned on the host, at the hash asked for
    assert "setup is deprecated: its command runs before commands" in result.stderr
    assert "a task without image sees" in result.stderr  # the plan says how the volume appears


def test_a_local_repo_at_a_sub_path_is_the_code_there_and_only_there(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    write(project_dir / "lib" / "x.txt", "from the repo\n")
    write(project_dir / "elsewhere.txt", "not the code\n")
    write(
        project_dir / ".dstack.yml",
        "type: task\n"
        "repos:\n  - local_path: lib\n    path: sub/dir\n"
        "commands:\n  - echo at=$(cat sub/dir/x.txt)\n  - echo top=$(ls)\n",
    )
    result = run(dstack_env, project_dir)
    assert result.returncode == 0, result.stderr
    assert "at=from the repo" in result.stdout.splitlines()
    assert "top=sub" in result.stdout.splitlines()  # the repo is the code: nothing else of the folder


def test_entrypoint_runs_with_the_commands_as_its_arguments(dstack_env: DstackEnv, project_dir: Path) -> None:
    write(
        project_dir / ".dstack.yml",
        "type: task\n"
        "entrypoint: python3 -c 'import sys; print(\"argv\", sys.argv[1:])'\n"
        "commands:\n  - one two\n  - $HOME; rm -rf /\n",
    )
    result = run(dstack_env, project_dir)
    assert result.returncode == 0, result.stderr
    # Each command is one argument, passed as data: no shell ever sees it.
    assert "argv ['one two', '$HOME; rm -rf /']" in result.stdout


def test_stop_duration_gives_a_stopping_task_its_time(dstack_env: DstackEnv, project_dir: Path) -> None:
    # The trap waits 15 s with shell builtins only (a new process would be sent SIGTERM too), longer than
    # the 10 s a task gets without stop_duration.
    write(
        project_dir / ".dstack.yml",
        "type: task\n"
        "stop_duration: 2m\n"
        "commands:\n"
        "  - mkfifo never.fifo && exec 9<>never.fifo\n"
        "  - trap 'echo got-term; for i in $(seq 15); do read -t 1 -u 9 || true; done;"
        " echo cleaned-up; exit 0' TERM\n"
        "  - echo ready\n"
        "  - while true; do read -t 1 -u 9 || true; done\n",
    )
    result = run(dstack_env, project_dir, "-d", "-n", "graceful")
    assert result.returncode == 0, result.stderr
    assert "Stop duration  2m" in result.stderr
    wait_for(lambda: "ready" in dstack_env.run("logs", "graceful").stdout, timeout=120, what="the task")
    dstack_env.run("stop", "graceful", "-y", check=True)
    wait_for(lambda: status(dstack_env, "graceful") == "terminated", timeout=120, what="the stop")
    logs = dstack_env.run("logs", "graceful", check=True).stdout
    assert "got-term" in logs and "cleaned-up" in logs


def test_secrets_reach_the_env_and_are_never_shown_back(dstack_env: DstackEnv, project_dir: Path) -> None:
    write(
        project_dir / ".dstack.yml",
        "type: task\nenv:\n  - API_KEY=${{ secrets.API_KEY }}\n  - PLAIN=x\n"
        "commands:\n  - echo key-length=${#API_KEY} key-start=$(echo $API_KEY | cut -c1-3)\n",
    )
    missing = run(dstack_env, project_dir)
    assert missing.returncode == 1
    assert "Secret API_KEY is not set in project main; set it with dstack secret set API_KEY VALUE" in (
        missing.stderr
    )
    dstack_env.run("secret", "set", "API_KEY", "abc-the-value", check=True)
    dstack_env.run("secret", "set", "OTHER", input="from-stdin\n", check=True)
    listed = dstack_env.run("secret", "list", check=True).stdout
    assert "API_KEY" in listed and "OTHER" in listed and "(hidden, 13 characters)" in listed
    assert "abc-the-value" not in listed and "from-stdin" not in listed
    result = run(dstack_env, project_dir, "-n", "with-secret")
    assert result.returncode == 0, result.stderr
    assert "key-length=13 key-start=abc" in result.stdout
    shown = json.dumps(run_json(dstack_env, "with-secret"))
    assert "abc-the-value" not in shown and "${{ secrets.API_KEY }}" in shown
    ps = dstack_env.run("ps", "-a", "-v", check=True).stdout
    assert "abc-the-value" not in ps
    dstack_env.run("secret", "delete", "OTHER", "-y", check=True)
    assert "OTHER" not in dstack_env.run("secret", "list", check=True).stdout


def test_dstack_true_gives_a_token_for_the_run_s_own_project_only(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    write(
        project_dir / ".dstack.yml",
        "type: task\ndstack: true\n"
        "commands:\n"
        "  - echo url=$DSTACK_SERVER_URL project=$DSTACK_PROJECT\n"
        "  - dstack ps -a\n"
        "  - dstack secret list || echo secrets-refused\n"
        "  - echo $DSTACK_TOKEN > token.txt\n"
        "  - cp token.txt $TOKEN_OUT\n",
    )
    token_file = project_dir / "seen-token.txt"
    result = run(dstack_env, project_dir, "-n", "inside", "-e", f"TOKEN_OUT={token_file}")
    assert result.returncode == 0, result.stderr
    assert "url=http://127.0.0.1:" in result.stdout and "project=main" in result.stdout
    assert "inside" in result.stdout  # the task listed its own project's runs with its token
    assert "A run's token cannot manage secrets" in result.stdout and "secrets-refused" in result.stdout
    token = token_file.read_text().strip()
    admin = api_client(dstack_env)
    try:
        assert token and token != admin.token
    finally:
        admin.close()
    # The run has ended: its token no longer works.
    from dstack.api.client import Client
    from dstack.api.errors import Unauthorized

    client = Client(admin.url, token)

    def refused() -> bool:
        try:
            client.list_runs()
        except Unauthorized:
            return True
        return False

    try:
        wait_for(refused, timeout=30, what="the run's token to stop working")
    finally:
        client.close()
