"""Capacity end to end: the real `dstack` command, server and agent on this machine.

Waiting for capacity, the retry window, GPUs declared in the server's config (this machine has none, and
declared GPUs are real to the scheduler), the no-offer sentence, max_duration, profiles and precedence,
and the CPU and memory caps. Tests assert what a user sees (order, statuses, reasons), never timings.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from dstack.agent.limits import Cgroups
from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.runkit import api_client, declare_gpus, run_json, stamp, status, write

pytestmark = pytest.mark.e2e

CPUS = len(os.sched_getaffinity(0))  # what the agent reports for this machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tasks(project_dir: Path) -> Path:
    write(
        project_dir / "stamp.dstack.yml",
        "type: task\ncommands:\n"
        "  - echo START=$(date +%s.%N) gpus=[$CUDA_VISIBLE_DEVICES]\n"
        # With GATE set, the task runs until the test creates that file: the test decides when it ends.
        '  - for i in $(seq 1200); do [ -z "$GATE" ] || [ -e "$GATE" ] && break; sleep 0.1; done\n'
        "  - sleep ${PAUSE:-0}\n"
        "  - echo END=$(date +%s.%N)\n",
    )
    return project_dir


def submit(
    env: DstackEnv, cwd: Path, name: str, *flags: str, pause: float = 0, gate: Path | None = None
) -> None:
    env.run(
        "run", ".", "-f", "stamp.dstack.yml", "-n", name, "-y", "-d", "-e", f"PAUSE={pause}",
        "-e", f"GATE={gate or ''}", *flags, cwd=cwd, check=True,
    )  # fmt: skip


def test_tasks_asking_for_every_cpu_run_one_after_another_in_order(
    dstack_env: DstackEnv, tasks: Path
) -> None:
    all_cpus = ["--cpu", str(CPUS)]
    gate = tasks / "gate"
    submit(dstack_env, tasks, "whole-1", *all_cpus, gate=gate)
    wait_for(lambda: status(dstack_env, "whole-1") == "running", timeout=60, what="whole-1 to run")
    submit(dstack_env, tasks, "whole-2", *all_cpus, "--retry-limit", "5m", pause=1)
    submit(dstack_env, tasks, "whole-3", *all_cpus, "--retry-limit", "5m")
    wait_for(lambda: status(dstack_env, "whole-3") == "pending", timeout=30, what="whole-3 to wait")
    assert status(dstack_env, "whole-2") == "pending"
    waiting = dstack_env.run("ps", "-v", check=True).stdout
    assert re.search(
        r"whole-2 .*pending .*Waiting for capacity: this machine is held alone by run whole-1", waiting
    )
    assert re.search(
        r"whole-3 .*pending .*this machine is promised to run whole-2, which waits ahead", waiting
    )
    # Attached, the CLI says it waits, then streams the task once capacity frees.
    attach = dstack_env.popen("attach", "whole-3")
    gate.touch()
    out, err = attach.communicate(timeout=120)
    assert attach.returncode == 0, err
    assert "Waiting for capacity... To exit, press Ctrl+C..." in err and "END=" in out
    for name in ("whole-1", "whole-2", "whole-3"):
        wait_for(lambda n=name: status(dstack_env, n) == "done", timeout=60, what=f"{name} to end")
    # Each started after the one before it had ended: first come, first served, one at a time.
    assert stamp(dstack_env, "whole-2", "START") > stamp(dstack_env, "whole-1", "END")
    assert stamp(dstack_env, "whole-3", "START") > stamp(dstack_env, "whole-2", "END")


def test_waiting_shows_in_the_cli_and_a_retry_window_closes(dstack_env: DstackEnv, tasks: Path) -> None:
    submit(dstack_env, tasks, "blocker", "--cpu", str(CPUS), pause=120)
    wait_for(lambda: status(dstack_env, "blocker") == "running", timeout=60, what="the blocker to run")
    result = dstack_env.run(
        "run", ".", "-f", "stamp.dstack.yml", "-n", "impatient", "-y", "--cpu", str(CPUS),
        "--retry-limit", "2s", cwd=tasks, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Waiting for capacity... To exit, press Ctrl+C..." in result.stderr
    assert "Run impatient failed: retry limit exceeded" in result.stderr
    ps = dstack_env.run("ps", "-a", "-v", check=True).stdout
    line = next(row for row in ps.splitlines() if row.strip().startswith("impatient"))
    assert "failed" in line and "retry limit exceeded while waiting for capacity" in line
    assert "this machine is held alone by run blocker" in line
    assert run_json(dstack_env, "impatient")["termination_reason"] == "retry_limit_exceeded"
    # Without retry, a run behind a busy machine fails at once with `no capacity` and says why.
    busy = dstack_env.run(
        "run", ".", "-f", "stamp.dstack.yml", "-n", "no-retry", "-y", "--cpu", str(CPUS), cwd=tasks
    )
    assert busy.returncode == 1
    assert "without --retry-limit the run fails at once" in busy.stderr
    assert run_json(dstack_env, "no-retry")["termination_reason"] == "no_capacity"
    dstack_env.run("stop", "blocker", "-y", "-x", check=True)


def test_declared_gpus_are_given_to_one_task_each_and_a_third_waits(
    dstack_env: DstackEnv, tasks: Path
) -> None:
    declare_gpus(dstack_env)
    submit(dstack_env, tasks, "gpu-a", "--gpu", "1", pause=120)
    submit(dstack_env, tasks, "gpu-b", "--gpu", "1", pause=120)
    for name in ("gpu-a", "gpu-b"):
        wait_for(
            lambda n=name: "gpus=[" in dstack_env.run("logs", n).stdout, timeout=60, what=f"{name} output"
        )
    seen = {
        name: re.search(r"gpus=\[(\d*)\]", dstack_env.run("logs", name).stdout) for name in ("gpu-a", "gpu-b")
    }
    indices = {name: m.group(1) for name, m in seen.items() if m}
    assert sorted(indices.values()) == ["0", "1"], indices
    submit(dstack_env, tasks, "gpu-c", "--gpu", "1", "--retry-limit", "5m")
    wait_for(lambda: status(dstack_env, "gpu-c") == "pending", timeout=30, what="gpu-c to wait")
    assert "this machine has 0 matching GPUs free" in str(run_json(dstack_env, "gpu-c")["status_message"])
    ps = dstack_env.run("ps", check=True).stdout
    assert re.search(r"gpu-a .*1xH100 \(80GB\)", ps), ps
    # The GPU gpu-a held goes to gpu-c once gpu-a stops.
    dstack_env.run("stop", "gpu-a", "-y", "-x", check=True)
    wait_for(lambda: status(dstack_env, "gpu-c") == "done", timeout=60, what="gpu-c to run")
    assert f"gpus=[{indices['gpu-a']}]" in dstack_env.run("logs", "gpu-c", check=True).stdout
    dstack_env.run("stop", "gpu-b", "-y", "-x", check=True)


def test_a_gpu_no_host_has_fails_with_the_sentence(dstack_env: DstackEnv, tasks: Path) -> None:
    declare_gpus(dstack_env)
    result = dstack_env.run("run", ".", "-f", "stamp.dstack.yml", "-y", "--gpu", "A100", cwd=tasks)
    assert result.returncode == 1
    sentence = re.search(
        r"No offer has an A100 GPU: this machine has \d+ CPUs?, \d+GB memory, 2xH100 \(80GB\)\.",
        result.stderr,
    )
    assert sentence, result.stderr
    assert "Traceback" not in result.stderr
    # `dstack offer` lists what fits without running anything, and says the same when nothing does.
    offer = dstack_env.run("offer", "--gpu", "H100:2", check=True).stdout
    assert re.search(r"1 +local +local +local .*2xH100 \(80GB\) +no +\$0", offer), offer
    missing = dstack_env.run("offer", "--gpu", "A100")
    assert missing.returncode == 1 and sentence.group(0) in missing.stderr
    # Through the API (the CLI refuses such a run before submitting it), it ends failed, `no capacity`.
    client = api_client(dstack_env)
    client.submit(api_spec("H100:3", "api-h100x3"))
    wait_for(lambda: status(dstack_env, "api-h100x3") == "failed", timeout=30, what="the run to fail")
    ended = run_json(dstack_env, "api-h100x3")
    assert ended["termination_reason"] == "no_capacity"
    assert ended["termination_message"].startswith("No offer has 3 H100 GPUs: this machine has")


def api_spec(gpu: str, name: str) -> dict:
    from dstack.config import parse_configuration, parse_overrides, resolve_profile

    configuration = parse_configuration("type: task\ncommands: [':']\n", filename="api.dstack.yml")
    profile = resolve_profile(configuration, None, parse_overrides(gpu=gpu))
    return {
        "run_name": name,
        "configuration": configuration.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "commands": [":"],
    }


def test_max_duration_stops_a_running_task(dstack_env: DstackEnv, tasks: Path) -> None:
    result = dstack_env.run(
        "run", ".", "-f", "stamp.dstack.yml", "-n", "too-long", "-y", "-e", "PAUSE=120",
        "--max-duration", "2s", cwd=tasks, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "START=" in result.stdout and "END=" not in result.stdout
    assert "Run too-long terminated: max duration exceeded" in result.stderr
    ps = dstack_env.run("ps", "-v", check=True).stdout
    assert re.search(r"too-long .*terminated .*max duration exceeded", ps), ps


def plan_of(env: DstackEnv, cwd: Path, *flags: str) -> str:
    """The plan `dstack run` prints before asking to continue (answered "n", so it stops there)."""
    result = env.run("run", ".", "-f", "stamp.dstack.yml", *flags, cwd=cwd, input="n\n")
    assert "Continue?" in result.stderr and "Exiting..." in result.stderr, result.stderr
    return result.stderr


def row(plan: str, key: str) -> str:
    match = re.search(rf"^ *{key}  +(.*)$", plan, re.MULTILINE)
    assert match, plan
    return match.group(1).strip()


def test_profiles_and_precedence(dstack_env: DstackEnv, tasks: Path) -> None:
    # Built-in defaults.
    plan = plan_of(dstack_env, tasks)
    assert row(plan, "Resources").startswith("2.. CPUs, 8GB.. memory, no GPU")
    assert row(plan, "Retry policy") == "no"
    write(
        tasks / ".dstack" / "profiles.yml",
        "profiles:\n"
        "  - name: everyday\n    default: true\n    max_duration: 1h\n    retry: {duration: 10m}\n"
        "    resources: {memory: 2GB, cpu: 1}\n"
        "  - name: big\n    resources: {memory: 4GB}\n    max_price: 2\n",
    )
    # The default profile beats the built-in default.
    plan = plan_of(dstack_env, tasks)
    assert row(plan, "Resources").startswith("1 CPU, 2GB memory")
    assert row(plan, "Max duration") == "1h" and row(plan, "Retry policy") == "wait up to 10m for capacity"
    # --profile picks another one.
    plan = plan_of(dstack_env, tasks, "--profile", "big")
    assert row(plan, "Resources").startswith("2.. CPUs, 4GB memory") and row(plan, "Max price") == "$2/h"
    # The configuration beats the profile; the CLI beats both.
    write(
        tasks / "stamp.dstack.yml",
        (tasks / "stamp.dstack.yml").read_text() + "resources:\n  memory: 3GB\nmax_duration: 30m\n",
    )
    plan = plan_of(dstack_env, tasks)
    assert row(plan, "Resources").startswith("1 CPU, 3GB memory") and row(plan, "Max duration") == "30m"
    plan = plan_of(dstack_env, tasks, "--memory", "1GB", "--max-duration", "off", "--no-retry")
    assert row(plan, "Resources").startswith("1 CPU, 1GB memory")
    assert row(plan, "Max duration") == "-" and row(plan, "Retry policy") == "no"
    # What the plan says is what the run holds.
    dstack_env.run(
        "run", ".", "-f", "stamp.dstack.yml", "-n", "sized", "-y", "--memory", "1GB", cwd=tasks, check=True
    )
    assert run_json(dstack_env, "sized")["resources"].startswith("1xCPU, 1GB")
    unknown = dstack_env.run("run", ".", "-f", "stamp.dstack.yml", "-y", "--profile", "nope", cwd=tasks)
    assert unknown.returncode == 1 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest.mark.skipif(Cgroups().mechanism() is None, reason="this machine cannot give processes cgroups")
def test_cpu_and_memory_caps_are_enforced(dstack_env: DstackEnv, project_dir: Path) -> None:
    write(
        project_dir / "hog.dstack.yml",
        "type: task\ncommands:\n"
        "  - cat /proc/self/cgroup\n"
        "  - python -c \"x = bytearray(300 * 1024 * 1024); print('got', len(x) // 2**20, 'MB')\"\n",
    )
    result = dstack_env.run(
        "run", ".", "-f", "hog.dstack.yml", "-n", "capped", "-y", "--cpu", "1", "--memory", "100MB",
        cwd=project_dir, timeout=120,
    )  # fmt: skip
    assert "dstack-job-" in result.stdout  # the task's processes are in a cgroup of their own
    assert "got 300 MB" not in result.stdout
    assert result.returncode == 137
    assert "killed, most likely for going over its 100MB memory cap" in result.stderr
    assert (
        "Reserves 1 CPU and 100MB memory on this machine, capped at 1 CPU and 100MB memory" in result.stderr
    )
    assert "(enforced with cgroup v" in result.stderr
    uncapped = dstack_env.run("run", ".", "-f", "hog.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert uncapped.returncode == 0 and "got 300 MB" in uncapped.stdout


def test_a_mistake_in_the_server_config_is_one_sentence(dstack_env: DstackEnv, tasks: Path) -> None:
    declare_gpus(dstack_env, "H100:2")  # no memory size
    sentence = "backends.0.resources.gpus: 'H100:2' needs a name and a memory size"
    result = dstack_env.run("run", ".", "-f", "stamp.dstack.yml", "-y", cwd=tasks)
    assert result.returncode == 1 and sentence in result.stderr and "Traceback" not in result.stderr
    server = dstack_env.run("server", "--port", str(free_port()), timeout=60)
    assert server.returncode == 1 and sentence in server.stderr and "Traceback" not in server.stderr
