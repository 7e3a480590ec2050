"""What works on this machine works on a fleet host: python and image environments with cached builds,
GPUs per task, max_duration, live edits (--reload), all on hosts that have nothing but Debian's python3
(and, for images, a Docker daemon of their own)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dockerd import BUSYBOX_IMAGE, BUSYBOX_OS_NAME
from tests.e2e.fleetkit import FLEET, apply, logs, task, wait_logs, wait_status, write_fleet
from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.portkit import Attached
from tests.infra.sshhosts import ClientKey, SSHHost

pytestmark = pytest.mark.e2e
A100 = ("NVIDIA A100-SXM4-80GB", 81920)


def _run(env: DstackEnv, project: Path, *args: str) -> tuple[int, str, str]:
    result = env.run("run", ".", "-y", "--fleet", FLEET, *args, cwd=project, timeout=300)
    return result.returncode, result.stdout, result.stderr


def test_python_and_image_builds_are_made_once_and_reused_on_a_host(
    dstack_env: DstackEnv, project_dir: Path, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey
) -> None:
    host = make_ssh_host()
    host.start_dockerd()
    assert apply(dstack_env, write_fleet(dstack_env.home, [host], client_key)).returncode == 0
    assert "containers" not in dstack_env.run("offer", "--fleet", FLEET).stderr

    # python: a venv made with the uv the server shipped, from Debian's python3.11.
    (project_dir / "requirements.txt").write_text("# nothing to install\n")
    task(
        project_dir,
        ["python -c 'import sys; print(sys.prefix != sys.base_prefix, sys.version_info[:2])'", "hostname"],
        extra='python: "3.11"\nbuild:\n  - pip install -r requirements.txt\n  - echo building\n',
    )
    code, out, err = _run(dstack_env, project_dir)
    assert code == 1 and "run it with --build" in err, err
    code, out, err = _run(dstack_env, project_dir, "--build")
    assert code == 0, err
    assert "building" in out and "True (3, 11)" in out and host.hostname in out
    code, out, err = _run(dstack_env, project_dir)
    assert code == 0 and "Using cached build" in out and "building" not in out, out

    # image: the host's own Docker daemon, its containers on the host's network.
    task(
        project_dir,
        ["head -n 1 /etc/os-release", "cat /built", "cat /workflow/requirements.txt"],
        extra=f"image: {BUSYBOX_IMAGE}\nbuild:\n  - echo built > /built\n",
        name="image.dstack.yml",
    )
    code, out, err = _run(dstack_env, project_dir, "-f", "image.dstack.yml", "--build")
    assert code == 0, err
    assert f'NAME="{BUSYBOX_OS_NAME}"' in out and "built" in out and "# nothing to install" in out
    code, out, err = _run(dstack_env, project_dir, "-f", "image.dstack.yml")
    assert code == 0 and "Using cached build" in out, out
    assert host.dockerd.docker("images", "--format", "{{.Repository}}").split().count("dstack-build") == 1


def test_gpus_are_given_to_tasks_one_by_one(
    dstack_env: DstackEnv, project_dir: Path, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey
) -> None:
    host = make_ssh_host(gpus=(A100, A100))
    assert apply(dstack_env, write_fleet(dstack_env.home, [host], client_key)).returncode == 0
    assert re.search(
        rf"{host.address}\s+idle\s+.*2xA100 \(80GB\)", dstack_env.run("fleet", check=True).stdout
    )
    task(project_dir, ["echo gpus=$CUDA_VISIBLE_DEVICES", "sleep 600"])
    for name in ("gpu-a", "gpu-b"):
        code, _, err = _run(dstack_env, project_dir, "-d", "--gpu", "A100:1", "-n", name)
        assert code == 0, err
    seen = {wait_logs(dstack_env, name, "gpus=").strip() for name in ("gpu-a", "gpu-b")}
    assert seen == {"gpus=0", "gpus=1"}
    code, _, err = _run(dstack_env, project_dir, "--gpu", "A100:1")
    assert code == 1 and "GPU" in err and "held by" in err, err
    for name in ("gpu-a", "gpu-b"):
        dstack_env.run("stop", name, "-x", "-y", check=True)


def test_max_duration_and_live_edits_on_a_host(
    dstack_env: DstackEnv, project_dir: Path, fleet_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    host = fleet_hosts[1]
    assert apply(dstack_env, write_fleet(dstack_env.home, [host], client_key)).returncode == 0
    task(project_dir, ["echo started", "sleep 600"], name="slow.dstack.yml")
    code, _, err = _run(
        dstack_env, project_dir, "-f", "slow.dstack.yml", "-d", "-n", "slow", "--max-duration", "3s"
    )
    assert code == 0, err
    ended = wait_status(dstack_env, "slow", ("terminated",), timeout=120)
    assert "max duration exceeded" in ended["line"], ended
    assert logs(dstack_env, "slow").startswith("started\n")

    (project_dir / "message.txt").write_text("first\n")
    task(project_dir, ["while true; do cat message.txt; sleep 0.2; done"], name="loop.dstack.yml")
    attached = Attached(
        dstack_env, "run", ".", "-f", "loop.dstack.yml", "-y", "--fleet", FLEET, "--reload", "-n", "loop",
        cwd=project_dir,
    )  # fmt: skip
    try:
        attached.wait_for("first", stream="stdout")
        time.sleep(0.5)  # let the watcher settle, as a user would take a moment to edit
        (project_dir / "message.txt").write_text("second\n")
        attached.wait_for("second", stream="stdout", timeout=60)
    finally:
        attached.stop()
    dstack_env.run("stop", "loop", "-y", check=True)
    wait_for(lambda: not host.processes_with_env("DSTACK_RUN_NAME=loop"), timeout=60, what="the task to stop")
