"""Bad input of every kind ends in one clear sentence and a non-zero exit code, never a traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv
from tests.e2e.test_run import task, write

CASES = [
    ("yaml-syntax", "type: task\ncommands: [echo hi\n", "bad.dstack.yml:3:1"),
    ("unknown-key", "type: task\ncomands:\n  - echo hi\n", "bad.dstack.yml:2:1: Unknown key 'comands'"),
    ("wrong-type", "type: task\ncommands: echo hi\n", "bad.dstack.yml:2:11"),
    ("image-and-python", "type: task\nimage: ubuntu\npython: '3.11'\ncommands: [ls]\n", "mutually exclusive"),
    ("bad-port", "type: task\nports: [70000]\ncommands: [ls]\n", "bad.dstack.yml:2:9"),
    ("bad-resource", "type: task\nresources:\n  gpu: 'A100::2'\ncommands: [ls]\n", "bad.dstack.yml:3:8"),
    ("unknown-variable", "type: task\ncommands:\n  - echo ${{ run.argz }}\n", "bad.dstack.yml:3:5"),
    ("other-type", "type: service\ncommands: [ls]\n", "not supported"),
]


@pytest.mark.parametrize(("case", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_broken_configuration(
    dstack_env: DstackEnv, project_dir: Path, case: str, text: str, expected: str
) -> None:
    write(project_dir / "bad.dstack.yml", text)
    result = dstack_env.run("run", ".", "-f", "bad.dstack.yml", "-y", cwd=project_dir)
    assert result.returncode == 1
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    # A broken file never starts a server.
    assert not (dstack_env.home / ".dstack" / "config.yml").exists()


def test_missing_configuration_file(dstack_env: DstackEnv, project_dir: Path) -> None:
    result = dstack_env.run("run", ".", "-f", "nope.dstack.yml", "-y", cwd=project_dir)
    assert result.returncode == 1
    assert result.stderr.strip() == "The configuration file nope.dstack.yml does not exist"
    result = dstack_env.run("run", ".", "-y", cwd=project_dir)
    assert result.returncode == 1
    assert "No configuration in ." in result.stderr


def test_wrong_flags_and_bad_flag_values(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["true"])
    result = dstack_env.run("ps", "--bogus")
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr
    result = dstack_env.run("run", ".", "-y", "--gpu", "A100::2", cwd=project_dir)
    assert result.returncode == 1 and "--gpu" in result.stderr and "Traceback" not in result.stderr
    result = dstack_env.run("run", ".", "-y", "-p", "99999:80", cwd=project_dir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    result = dstack_env.run("run", ".", "-y", "-e", "1BAD=x", cwd=project_dir)
    assert result.returncode == 1 and "Invalid -e value" in result.stderr


def test_unknown_run_names(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["true"])
    dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)
    for command in (["logs", "nope"], ["logs", "-f", "nope"], ["stop", "nope", "-y"], ["attach", "nope"]):
        result = dstack_env.run(*command)
        assert result.returncode == 1, command
        assert result.stderr.strip() == "Run nope not found in project main", command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _configure(env: DstackEnv, url: str, token: str, embedded: bool = False) -> None:
    config = {
        "projects": [{"name": "main", "url": url, "token": token, "default": True, "embedded": embedded}]
    }
    write(env.home / ".dstack" / "config.yml", json.dumps(config))


def test_unreachable_server(dstack_env: DstackEnv, project_dir: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    _configure(dstack_env, url, "whatever")
    result = dstack_env.run("ps")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"Cannot reach the dstack server at {url}: nothing answers there (is it running?)"
    )
    task(project_dir, ["true"])
    result = dstack_env.run("run", ".", "-y", cwd=project_dir)
    assert result.returncode == 1 and "Cannot reach the dstack server" in result.stderr


def test_wrong_token(dstack_env: DstackEnv, project_dir: Path) -> None:
    task(project_dir, ["true"])
    dstack_env.run("run", ".", "-y", cwd=project_dir, check=True)  # starts the embedded server
    config = json.loads((dstack_env.home / ".dstack" / "config.yml").read_text())
    url = config["projects"][0]["url"]
    _configure(dstack_env, url, "not-the-token")
    result = dstack_env.run("ps")
    assert result.returncode == 1
    assert "rejected the token" in result.stderr and "Traceback" not in result.stderr
    result = dstack_env.run("config", "--url", url, "--token", "not-the-token")
    assert (
        result.returncode == 1 and result.stderr.strip() == f"The server at {url} does not accept this token"
    )
    result = dstack_env.run("config", "--url", url, "--token", config["projects"][0]["token"])
    assert result.returncode == 0, result.stderr
    assert dstack_env.run("ps").returncode == 0


def test_busy_server_port(dstack_env: DstackEnv) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = dstack_env.run("server", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().endswith("pass --port to use another one")


# -- the sweep through the real binary (issue 13, items 10-15) ----------------------------------------------

# A representative subset of tests/unit/cli/sweepkit.py's cases, run by the real `dstack` command.
_BINARY_CASES = (
    "num/max_price/huge",
    "num/resources:cpu/long-digits",
    "num/ports/unicode-0",
    "field/port-fullwidth",
    "field/cpu-unicode-two",
    "field/duration-unicode",
    "field/cpu-zero",
    "field/memory-zero",
    "text/name/long",
    "text/working_dir/long",
    "structure/not-utf8",
    "structure/yaml-deep",
    "flag/cpu/0",
    "flag/gpu/0",
    "flag/n/0",
    "flag/p/1",
    "command/no-command-unknown-flag",
    "command/version-extra",
    "command/server-host-foreign",
    "command/ps-limit-unicode",
    "path-long-file-name",
    "path-long-workdir",
    "size/spec-over-limit",
)


def test_a_subset_of_the_sweep_through_the_real_binary(dstack_env: DstackEnv, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "cli"))
    from sweepkit import MAX_MESSAGE, UNREACHABLE, all_cases, write_case

    cases = {case.id: case for case in all_cases()}
    _configure(dstack_env, f"http://127.0.0.1:{_free_port()}", "whatever")  # nothing answers there
    log = dstack_env.home / ".dstack" / "logs" / "cli.log"
    for case_id in _BINARY_CASES:
        case = cases[case_id]
        folder = write_case(case, tmp_path)
        argv = [a.replace("{dir}", str(folder)) for a in case.argv]
        result = dstack_env.run(*argv, cwd=folder)
        assert result.returncode != 0, case_id
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (case_id, result.stderr)
        assert len(result.stderr) <= MAX_MESSAGE, (case_id, result.stderr)
        assert "Unexpected error" not in result.stderr and "Traceback" not in result.stderr, case_id
        assert UNREACHABLE not in result.stderr, (case_id, result.stderr)
        if case.expect is not None:
            assert case.expect in result.stderr, (case_id, result.stderr)
        assert not log.exists(), (case_id, log.read_text())


def test_a_run_spec_over_the_agents_limit_is_refused_at_submission(
    dstack_env: DstackEnv, project_dir: Path
) -> None:
    from dstack.api.client import Client
    from dstack.api.errors import APIError

    task(project_dir, ["true"])
    dstack_env.run("run", ".", "-y", "-n", "small", cwd=project_dir, check=True)  # starts the server
    entry = json.loads((dstack_env.home / ".dstack" / "config.yml").read_text())["projects"][0]
    client = Client(entry["url"], entry["token"])
    spec = client.get_run("small")["spec"]
    # An API user skips the CLI's own check.
    spec.update(run_name="big", code_hash=None, commands=["echo " + "x" * 1000] * 1100)
    for call in (client.plan, client.submit):
        with pytest.raises(APIError) as refused:
            call(spec)
        assert refused.value.status == 400 and "too big for a host" in refused.value.message
    assert "big" not in dstack_env.run("ps", "-a").stdout
