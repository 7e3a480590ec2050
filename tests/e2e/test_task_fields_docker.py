"""Today's dstack's container fields, end to end: the real `dstack` command, server, agent and a private
dockerd (tests/dockerd.py); a private image on a real registry on loopback (Debian's docker-registry, with
htpasswd auth), pulled with `registry_auth` and refused without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The docker fixtures are imported so that pytest finds them here (they are session-scoped).
from tests.dockerd import BUSYBOX_IMAGE, Dockerd, debian_image, dockerd  # noqa: F401
from tests.e2e.harness import DstackEnv
from tests.e2e.runkit import run_json, write

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REGISTRY = "/usr/bin/docker-registry"


@pytest.fixture
def docker_env(dstack_env: DstackEnv, dockerd: Dockerd) -> Iterator[DstackEnv]:  # noqa: F811
    dstack_env.env.update(dockerd.env)
    yield dstack_env
    dstack_env.cleanup()
    for container in dockerd.containers("label=dstack.job.marker"):
        dockerd.docker("rm", "-f", container)


def run(env: DstackEnv, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return env.run("run", ".", "-y", *args, cwd=project, timeout=240)


def test_user_entrypoint_working_dir_files_and_volumes_of_an_image_task(
    docker_env: DstackEnv,
    project_dir: Path,
    debian_image: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    volume = write(tmp_path / "volume" / "shared.txt", "from the host\n").parent
    write(project_dir / "app.conf", "setting=1\n")
    write(docker_env.home / ".netrc", "machine example\n")
    write(
        project_dir / ".dstack.yml",
        f"type: task\nimage: {debian_image}\n"
        "user: nobody\n"
        "working_dir: /tmp/app\n"
        "entrypoint: python3 -c\n"
        "commands:\n"
        "  - |\n"
        "    import os, pathlib, subprocess\n"
        "    user = subprocess.run(['id', '-un'], capture_output=True, text=True).stdout.strip()\n"
        "    print('user', user, 'cwd', os.getcwd())\n"
        "    print('conf', pathlib.Path('/etc/app/app.conf').read_text().strip())\n"
        "    print('netrc', pathlib.Path('~/.netrc').expanduser().read_text().strip())\n"
        "    print('volume', pathlib.Path('/data/shared.txt').read_text().strip())\n"
        "files:\n  - app.conf:/etc/app/app.conf\n  - ~/.netrc:~/.netrc\n"
        f"volumes:\n  - {volume}:/data\n",
    )
    result = run(docker_env, project_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "user nobody cwd /tmp/app" in lines, lines  # `id -un` in the task says the user asked for
    assert "conf setting=1" in lines  # placed as root, though nobody could not write /etc
    assert "netrc machine example" in lines  # `~` is the container user's home
    assert "volume from the host" in lines


def test_shell_and_privileged_of_an_image_task(
    docker_env: DstackEnv,
    project_dir: Path,
    debian_image: str,  # noqa: F811
) -> None:
    write(
        project_dir / "shell.dstack.yml",
        f"type: task\nimage: {debian_image}\nshell: sh\n"
        "commands:\n  - echo bash=${BASH_VERSION:-none} id=$(id -un)\n",
    )
    result = run(docker_env, project_dir, "-f", "shell.dstack.yml")
    assert result.returncode == 0, result.stderr
    assert "bash=none id=root" in result.stdout  # sh, though the image has bash
    write(
        project_dir / "privileged.dstack.yml",
        f"type: task\nimage: {debian_image}\nprivileged: true\n"
        "commands:\n  - grep CapEff /proc/self/status\n",
    )
    result = run(docker_env, project_dir, "-f", "privileged.dstack.yml")
    if result.returncode == 0:
        cap_eff = result.stdout.split("CapEff:")[1].split()[0]
        assert int(cap_eff, 16) >= 0x1FFFFFFFFF  # every capability: a privileged container
    else:
        # A host that is itself confined (as some CI machines are) cannot grant every capability; the
        # daemon's refusal reaches the user as the run's reason.
        assert "failed to start" in result.stderr and "caps" in result.stderr, result.stderr


# -- a private registry on loopback ------------------------------------------------------------------------


@dataclass
class Registry:
    address: str  # 127.0.0.1:PORT
    user: str
    password: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if not Path(REGISTRY).exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("docker-registry is not installed (dev/setup installs it)")
        pytest.skip("docker-registry is not installed (dev/setup installs it)")
    import bcrypt

    root = tmp_path_factory.mktemp("registry")
    password = "s3cret-" + os.urandom(4).hex()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    (root / "htpasswd").write_text(f"alice:{hashed}\n")
    port = _free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {os.urandom(8).hex()}\n"
        f"auth:\n  htpasswd:\n    realm: dstack-test\n    path: {root / 'htpasswd'}\n"
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        [REGISTRY, "serve", str(root / "config.yml")], stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    break  # up, and asking for credentials
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"docker-registry did not start: {(root / 'registry.log').read_text()}")
            time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", "alice", password)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def push_private_image(daemon: Dockerd, registry: Registry, config_dir: Path) -> str:
    """Push the busybox test image to the registry and remove it from the daemon: only a pull brings it."""
    image = f"{registry.address}/private/busybox:1"
    env = {**os.environ, "DOCKER_HOST": daemon.host, "DOCKER_CONFIG": str(config_dir)}

    def docker(*args: str, stdin: str | None = None) -> None:
        subprocess.run(["docker", *args], input=stdin, text=True, env=env, capture_output=True, check=True)

    docker("tag", BUSYBOX_IMAGE, image)
    # Loopback registries need no --insecure-registry: dockerd allows plain HTTP to 127.0.0.0/8.
    docker("login", "-u", registry.user, "--password-stdin", registry.address, stdin=registry.password)
    docker("push", image)
    docker("logout", registry.address)
    docker("rmi", image)
    shutil.rmtree(config_dir, ignore_errors=True)
    return image


def test_a_private_image_is_pulled_with_registry_auth_and_refused_without(
    docker_env: DstackEnv,
    project_dir: Path,
    dockerd: Dockerd,  # noqa: F811
    registry: Registry,
    tmp_path: Path,
) -> None:
    image = push_private_image(dockerd, registry, tmp_path / "docker-config")
    assert not dockerd.image_exists(image)
    write(project_dir / "plain.dstack.yml", f"type: task\nimage: {image}\ncommands:\n  - echo pulled\n")
    refused = run(docker_env, project_dir, "-f", "plain.dstack.yml")
    assert refused.returncode == 1
    assert (
        f"Could not pull image {image}: the registry requires credentials; give them in registry_auth"
        in refused.stderr
    )
    write(
        project_dir / "auth.dstack.yml",
        f"type: task\nimage: {image}\n"
        "env:\n  - REGISTRY_USER\n"
        "registry_auth:\n  username: ${{ env.REGISTRY_USER }}\n  password: ${{ secrets.REGISTRY_PASSWORD }}\n"
        "commands:\n  - echo pulled-with-auth\n",
    )
    docker_env.run("secret", "set", "REGISTRY_PASSWORD", registry.password, check=True)
    docker_env.env["REGISTRY_USER"] = registry.user
    pulled = run(docker_env, project_dir, "-f", "auth.dstack.yml", "-n", "private-pull")
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled-with-auth" in pulled.stdout
    assert dockerd.image_exists(image)
    assert registry.password not in json.dumps(run_json(docker_env, "private-pull"))
