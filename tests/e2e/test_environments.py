"""End to end: a task's environment (SPEC §5) through the real `dstack` command, server and agent.

Python versions come from the machine's interpreters (never downloaded); images from the private test
dockerd (tests/dockerd.py), built locally; packages from wheels the tests make (no index is reachable).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# The docker fixtures are imported so that pytest finds them here (they are session-scoped).
from tests.dockerd import (  # noqa: F401
    BUSYBOX_DEFAULT_OUTPUT,
    BUSYBOX_IMAGE,
    BUSYBOX_OS_NAME,
    Dockerd,
    debian_image,
    dockerd,
)
from tests.e2e.envkit import make_wheel, write_config
from tests.e2e.harness import DstackEnv, wait_for

pytestmark = pytest.mark.e2e

# pip must never reach for an index: packages come from local wheels.
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture
def env(dstack_env: DstackEnv) -> DstackEnv:
    dstack_env.env.update(OFFLINE_PIP)
    return dstack_env


@pytest.fixture
def docker_env(env: DstackEnv, dockerd: Dockerd) -> Iterator[DstackEnv]:  # noqa: F811
    env.env.update(dockerd.env)
    yield env
    # The harness kills the server and agent with SIGKILL; their containers must not outlive the test.
    env.cleanup()
    for container in dockerd.containers("label=dstack.job.marker"):
        dockerd.docker("rm", "-f", container)


def run(env: DstackEnv, project: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return env.run("run", ".", "-y", *args, cwd=project, timeout=timeout)


def agent_dir(env: DstackEnv) -> Path:
    return env.home / ".dstack" / "server" / "agents" / "local"


# -- python ----------------------------------------------------------------------------------------------


def test_python_version_and_pip_install_stay_in_the_tasks_environment(
    env: DstackEnv, project_dir: Path
) -> None:
    make_wheel(project_dir / "wheels", "dstack_probe")
    write_config(
        project_dir,
        'python: "3.12"\n'
        "commands:\n"
        "  - python -c 'import sys; print(\"version\", sys.version.split()[0])'\n"
        "  - pip install --quiet wheels/dstack_probe-1.0-py3-none-any.whl\n"
        "  - python -c 'import dstack_probe, sys; print(\"installed\", dstack_probe.__file__)'\n"
        "  - echo pip $(command -v pip)\n",
    )
    result = run(env, project_dir)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["version"].startswith("3.12.")
    envs = agent_dir(env) / "envs"
    assert Path(lines["installed"]).is_relative_to(envs), lines["installed"]
    assert Path(lines["pip"]).is_relative_to(envs), lines["pip"]
    # The host's Python never saw the package.
    host = subprocess.run([sys.executable, "-c", "import dstack_probe"], capture_output=True)
    assert host.returncode != 0

    # Each run has an environment of its own: what one installed is not in the next one's.
    write_config(project_dir, 'python: "3.12"\ncommands:\n  - python -c "import dstack_probe"\n')
    result = run(env, project_dir)
    assert result.returncode == 1 and "No module named 'dstack_probe'" in result.stdout


def test_without_python_or_image_the_task_gets_the_clis_python(env: DstackEnv, project_dir: Path) -> None:
    write_config(project_dir, "commands:\n  - python -c 'import sys; print(sys.version_info[:2])'\n")
    result = run(env, project_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sys.version_info[:2])


def test_a_python_the_host_lacks_and_cannot_get_is_one_sentence_in_the_plan(
    env: DstackEnv, project_dir: Path
) -> None:
    write_config(project_dir, 'python: "3.14"\ncommands:\n  - python -V\n')
    result = run(env, project_dir)
    assert result.returncode != 0
    assert "No offer has Python 3.14" in result.stderr
    assert "Traceback" not in result.stderr


# -- build -----------------------------------------------------------------------------------------------


def _build_project(project: Path) -> None:
    make_wheel(project / "wheels", "dstack_built", body="MESSAGE = 'from the build'\n")
    (project / "requirements.txt").write_text("wheels/dstack_built-1.0-py3-none-any.whl\n")
    write_config(
        project,
        'python: "3.12"\n'
        "build:\n"
        "  - echo building now\n"
        "  - pip install --quiet -r requirements.txt\n"
        "commands:\n"
        "  - python -c 'import dstack_built; print(dstack_built.MESSAGE)'\n",
    )


def test_python_build_is_cached_and_rebuilt_when_requirements_change(
    env: DstackEnv, project_dir: Path
) -> None:
    _build_project(project_dir)

    # The plan says the build is not cached, and nothing is submitted (SPEC §5; issue 13, item 18).
    refused = run(env, project_dir)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "This configuration's build is not cached on any host that fits; "
        "run it with --build to build it (dstack run . -f .dstack.yml --build)"
    ), refused.stderr
    assert "from the build" not in refused.stdout
    assert env.run("ps", "-a", check=True).stdout.strip().splitlines()[1:] == []

    first = run(env, project_dir, "--build")
    assert first.returncode == 0, first.stderr
    key = _assert_built(first.stdout, "Python 3.12", ["building now"], ["from the build"])

    second = run(env, project_dir, "--build")
    assert second.returncode == 0, second.stderr
    # Nothing was built: no build output, only the line saying which build the commands run in.
    assert second.stdout.splitlines()[1:] == ["from the build"]
    assert second.stdout.startswith(f"Using cached build {key} from ")

    # Without --build the cached build is used as well.
    third = run(env, project_dir)
    assert third.returncode == 0, third.stderr
    assert third.stdout.startswith(f"Using cached build {key} ")

    # Editing requirements.txt means a new build.
    (project_dir / "requirements.txt").write_text("# pinned\nwheels/dstack_built-1.0-py3-none-any.whl\n")
    assert "build is not cached on any host" in run(env, project_dir).stderr
    rebuilt = run(env, project_dir, "--build")
    assert rebuilt.returncode == 0, rebuilt.stderr
    new_key = _assert_built(rebuilt.stdout, "Python 3.12", ["building now"], ["from the build"])
    assert new_key != key

    forced = run(env, project_dir, "--force-build")
    assert forced.returncode == 0, forced.stderr
    assert _assert_built(forced.stdout, "Python 3.12", ["building now"], ["from the build"]) == new_key


def _assert_built(stdout: str, description: str, build_output: list[str], task_output: list[str]) -> str:
    """Check the output of a run that built its environment; returns the build's (short) key."""
    lines = stdout.splitlines()
    pattern = rf"Building the environment \({re.escape(description)}, build ([0-9a-f]{{12}})\)"
    match = re.fullmatch(pattern, lines[0])
    assert match, lines
    key = match.group(1)
    assert lines[1:] == [*build_output, f"Build {key} is cached for later runs", *task_output], lines
    return key


def test_a_failing_build_fails_the_run_with_build_failed(env: DstackEnv, project_dir: Path) -> None:
    write_config(
        project_dir,
        'python: "3.12"\nbuild:\n  - echo about to fail\n  - exit 4\ncommands:\n  - echo never runs\n',
    )
    result = run(env, project_dir, "--build")
    assert result.returncode == 1
    # Build output streams like task output.
    assert result.stdout.splitlines()[1:] == ["about to fail"], result.stdout
    assert "build failed" in result.stderr
    listing = env.run("ps", "-a", "-v", check=True).stdout
    assert "build failed" in listing and "exit code 4" in listing


# -- images ----------------------------------------------------------------------------------------------


def test_image_task_runs_in_the_image_with_its_exit_code(docker_env: DstackEnv, project_dir: Path) -> None:
    (project_dir / "data.txt").write_text("code is mounted\n")
    write_config(
        project_dir,
        f"image: {BUSYBOX_IMAGE}\n"
        'env:\n  - GREETING=it\'s "quoted"\n'
        "commands:\n"
        "  - cat /etc/os-release\n"
        "  - cat data.txt\n"
        '  - echo "greeting=$GREETING"\n'
        "  - exit 3\n",
    )
    result = run(docker_env, project_dir)
    assert result.returncode == 3, result.stderr
    assert f'NAME="{BUSYBOX_OS_NAME}"' in result.stdout
    assert "code is mounted" in result.stdout
    assert 'greeting=it\'s "quoted"' in result.stdout


def test_container_output_arrives_once_and_in_order(docker_env: DstackEnv, project_dir: Path) -> None:
    # The container's first lines race its start; each must come through exactly once.
    write_config(project_dir, f"image: {BUSYBOX_IMAGE}\ncommands:\n  - seq 1 3000\n")
    result = run(docker_env, project_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(i) for i in range(1, 3001)]


def test_image_task_without_commands_runs_the_images_own_command(
    docker_env: DstackEnv, project_dir: Path
) -> None:
    write_config(project_dir, f"image: {BUSYBOX_IMAGE}\n")
    result = run(docker_env, project_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == BUSYBOX_DEFAULT_OUTPUT


def test_stop_of_an_image_task_leaves_no_container(
    docker_env: DstackEnv,
    project_dir: Path,
    dockerd: Dockerd,  # noqa: F811
) -> None:
    write_config(project_dir, f"image: {BUSYBOX_IMAGE}\ncommands:\n  - echo started\n  - sleep 300\n")
    name = run(docker_env, project_dir, "-d").stdout.strip().splitlines()[-1]
    wait_for(
        lambda: dockerd.containers("label=dstack.job.marker", "status=running"),
        timeout=60,
        what="the task's container to run",
    )
    stopped = docker_env.run("stop", name, "-y", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(
        lambda: "terminated" in docker_env.run("ps", "-a").stdout, timeout=60, what="the run to be terminated"
    )
    wait_for(lambda: not dockerd.containers("label=dstack.job.marker"), timeout=30, what="no container left")


def test_image_task_uses_bash_and_the_hosts_network(
    docker_env: DstackEnv,
    project_dir: Path,
    debian_image: str,  # noqa: F811
) -> None:
    port = _free_port()
    (project_dir / "index.html").write_text("served from the container\n")
    write_config(
        project_dir,
        f"image: {debian_image}\n"
        "commands:\n"
        "  - echo shell $BASH_VERSION\n"
        f"  - python3 -m http.server {port} --bind 127.0.0.1\n",
    )
    name = run(docker_env, project_dir, "-d").stdout.strip().splitlines()[-1]

    def fetch() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    # The task's port is on the host's loopback, where the CLI's port forward expects it.
    assert wait_for(fetch, timeout=90, what="the container's server on the host's loopback") == (
        "served from the container\n"
    )
    logs = docker_env.run("logs", name).stdout
    assert logs.startswith("shell 5."), logs  # the image has bash, so the commands ran in bash
    docker_env.run("stop", name, "-y", check=True, timeout=60)


def test_image_build_is_committed_and_reused(docker_env: DstackEnv, project_dir: Path) -> None:
    write_config(
        project_dir,
        f"image: {BUSYBOX_IMAGE}\n"
        "build:\n  - echo building the image\n  - mkdir -p /opt && echo baked in > /opt/marker\n"
        "commands:\n  - cat /opt/marker\n",
    )
    assert "build is not cached on any host" in run(docker_env, project_dir).stderr
    first = run(docker_env, project_dir, "--build")
    assert first.returncode == 0, first.stderr
    key = _assert_built(first.stdout, f"image {BUSYBOX_IMAGE}", ["building the image"], ["baked in"])
    second = run(docker_env, project_dir, "--build")
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"Using cached build {key} ")
    assert second.stdout.splitlines()[1:] == ["baked in"]
    # The built image keeps the base image's own command.
    write_config(
        project_dir,
        f"image: {BUSYBOX_IMAGE}\n"
        "build:\n  - echo building the image\n  - mkdir -p /opt && echo baked in > /opt/marker\n",
    )
    own = run(docker_env, project_dir)
    assert own.returncode == 0, own.stderr
    assert own.stdout.splitlines()[1:] == [BUSYBOX_DEFAULT_OUTPUT]


@pytest.fixture
def silent_registry() -> Iterator[int]:
    """A "registry" on loopback that accepts connections and never answers: a pull of it hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stopping.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stopping.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def test_pulling_shows_in_the_cli_and_ps_and_a_stop_ends_it(
    docker_env: DstackEnv, project_dir: Path, silent_registry: int
) -> None:
    image = f"127.0.0.1:{silent_registry}/dstack/slow:1"
    write_config(project_dir, f"image: {image}\ncommands:\n  - echo never\n")
    attached = docker_env.popen("run", ".", "-y", cwd=project_dir)
    stderr_lines: list[str] = []
    reader = threading.Thread(
        target=lambda: stderr_lines.extend(iter(attached.stderr.readline, "")), daemon=True
    )
    reader.start()
    try:
        wait_for(
            lambda: any(f"Pulling image {image}" in line for line in stderr_lines),
            timeout=90,
            what="the CLI to show the pull",
        )
        listing = docker_env.run("ps", "-v", check=True).stdout
        row = next(line for line in listing.splitlines() if "pulling" in line)
        assert f"Pulling image {image}" in row
        name = row.split()[0]
        docker_env.run("stop", name, "-y", check=True, timeout=60)
        assert attached.wait(60) == 1
    finally:
        if attached.poll() is None:
            attached.kill()
    wait_for(lambda: "terminated" in docker_env.run("ps", "-a").stdout, timeout=30, what="the run to end")


def test_pull_failure_is_one_sentence(docker_env: DstackEnv, project_dir: Path) -> None:
    # A registry on a closed loopback port: the pull fails at once and never leaves the machine.
    write_config(project_dir, "image: 127.0.0.1:9/dstack/missing:1\ncommands:\n  - echo never\n")
    result = run(docker_env, project_dir)
    assert result.returncode == 1
    assert "Could not pull image 127.0.0.1:9/dstack/missing:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_docker_the_plan_says_image_tasks_cannot_run(env: DstackEnv, project_dir: Path) -> None:
    env.env["DOCKER_HOST"] = f"unix://{env.home / 'no-docker.sock'}"
    write_config(project_dir, f"image: {BUSYBOX_IMAGE}\ncommands:\n  - echo never\n")
    result = run(env, project_dir)
    assert result.returncode != 0
    assert "No offer can run containers (an image task needs Docker on its host)" in result.stderr
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
