"""A private Docker daemon for the tests, and the test images it holds, built from nothing.

No registry is reachable from the test machines, so images are made locally:
- `dstack-test/busybox:1`: a busybox-static rootfs (no bash, only /bin/sh), imported with `docker import`;
- `dstack-test/debian:bookworm`: a debootstrap'd Debian minbase with bash and python3 (~40 s to make the
  first time; its tarball is cached under ~/.cache/dstack-tests and re-imported in a second or two).

The daemon runs with `--bridge=none --iptables=false` (the default bridge would take a private-range
subnet, which is not allowed here) and its own data root, exec root, socket and pidfile, so it never
touches another daemon on the machine; it is stopped (and its folders removed) at the end.

Where dockerd cannot be started the docker tests are skipped, except under CI=true, where they fail:
a CI run must never pass by silently skipping them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUSYBOX_IMAGE = "dstack-test/busybox:1"
DEBIAN_IMAGE = "dstack-test/debian:bookworm"
BUSYBOX_OS_NAME = "dstack test busybox"
BUSYBOX_DEFAULT_OUTPUT = "hello from the image command"
CACHE_DIR = Path(os.environ.get("DSTACK_TEST_CACHE", Path.home() / ".cache" / "dstack-tests"))
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class DockerUnavailable(Exception):
    pass


@dataclass
class Dockerd:
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def docker(
        self, *args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None
    ) -> str:
        """Run the docker CLI against this daemon; raises with its output if it fails."""
        result = subprocess.run(
            ["docker", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {}), "DOCKER_HOST": self.host},
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def containers(self, *filters: str) -> list[str]:
        """Ids of all containers (running or not) matching `label=...` style filters."""
        args = ["ps", "-aq", "--no-trunc"]
        for f in filters:
            args += ["--filter", f]
        return self.docker(*args).split()

    def image_exists(self, name: str) -> bool:
        try:
            self.docker("image", "inspect", name)
        except RuntimeError:
            return False
        return True

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")


def start_dockerd(root: Path | None = None, wrap: list[str] | None = None) -> Dockerd:
    """`wrap`: run dockerd through this (e.g. nsenter into a test host's namespaces); `root`: its folder."""
    if os.geteuid() != 0:
        raise DockerUnavailable("dockerd needs root")
    binary = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)
    if binary is None or shutil.which("docker") is None:
        raise DockerUnavailable("dockerd or the docker CLI is not installed (dev/setup installs docker.io)")
    # Short: containerd's sockets live under the exec root, and unix socket paths are limited to 108 bytes.
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="dstk-dockerd-"))
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            *(wrap or []),
            binary,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "-H",
            f"unix://{root / 'docker.sock'}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    daemon = Dockerd(root, process)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = daemon.log()
            stop_dockerd(daemon)
            raise DockerUnavailable(f"dockerd exited with {process.returncode}: {text[-2000:]}")
        if daemon.socket.exists():
            try:
                daemon.docker("version", timeout=10)
                return daemon
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        time.sleep(0.2)
    text = daemon.log()
    stop_dockerd(daemon)
    raise DockerUnavailable(f"dockerd did not answer within {START_TIMEOUT:.0f} s: {text[-2000:]}")


def stop_dockerd(daemon: Dockerd) -> None:
    with contextlib.suppress(Exception):
        for container in daemon.containers():
            daemon.docker("rm", "-f", container, timeout=30)
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.process.pid, signal.SIGKILL)
            daemon.process.wait(10)
    # dockerd unmounts its overlays on a clean exit; anything left mounted must not block the removal.
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mount_point = line.split()[1]
        if mount_point.startswith(str(daemon.root) + "/"):
            subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
    shutil.rmtree(daemon.root, ignore_errors=True)


# -- images --------------------------------------------------------------------------------------------


def import_busybox(daemon: Dockerd) -> str:
    if daemon.image_exists(BUSYBOX_IMAGE):
        return BUSYBOX_IMAGE
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory(prefix="dstk-busybox-") as tmp:
        rootfs = Path(tmp)
        for folder in ("bin", "etc", "tmp", "root", "proc", "sys", "dev"):
            (rootfs / folder).mkdir()
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        applets = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox" and not (rootfs / "bin" / applet).exists():
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc" / "os-release").write_text(f'NAME="{BUSYBOX_OS_NAME}"\nID=dstack-busybox\n')
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    daemon.docker(
        "import",
        "-c",
        f'CMD ["/bin/sh", "-c", "echo {BUSYBOX_DEFAULT_OUTPUT}"]',
        "-c",
        "ENV PATH=/bin",
        "-",
        BUSYBOX_IMAGE,
        input=tar,
    )
    return BUSYBOX_IMAGE


def import_debian(daemon: Dockerd) -> str:
    if daemon.image_exists(DEBIAN_IMAGE):
        return DEBIAN_IMAGE
    tarball = _debian_rootfs_tarball()
    with tarball.open("rb") as f:
        daemon.docker(
            "import",
            "-c",
            'CMD ["python3"]',
            "-c",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "-",
            DEBIAN_IMAGE,
            input=f.read(),
            timeout=300,
        )
    return DEBIAN_IMAGE


def _debian_rootfs_tarball() -> Path:
    """The cached tarball of a Debian minbase rootfs with python3, made with debootstrap if missing."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / "debian-bookworm-python3.tar"
    with (CACHE_DIR / "debian.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions at once must not both debootstrap
        if tarball.exists():
            return tarball
        if shutil.which("debootstrap") is None:
            raise DockerUnavailable("debootstrap is not installed (dev/setup installs it)")
        with tempfile.TemporaryDirectory(prefix="dstk-debian-", dir=CACHE_DIR) as tmp:
            rootfs = Path(tmp) / "rootfs"
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(rootfs), _mirror()],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if result.returncode != 0:
                raise DockerUnavailable(f"debootstrap failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (rootfs / cache).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            partial = Path(tmp) / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=300)
            partial.rename(tarball)
    return tarball


def _mirror() -> str:
    """The machine's configured Debian mirror (the one apt uses), else Debian's default."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    with contextlib.suppress(OSError):
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", sources.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


# -- pytest fixtures -----------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"The docker tests cannot run in CI: {reason}")
    pytest.skip(f"no Docker daemon for the tests: {reason}")


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A private dockerd for the whole session, with the busybox test image imported."""
    try:
        daemon = start_dockerd()
    except DockerUnavailable as e:
        _unavailable(str(e))
        raise  # unreachable: _unavailable raises
    try:
        import_busybox(daemon)
        yield daemon
    finally:
        stop_dockerd(daemon)


@pytest.fixture(scope="session")
def debian_image(dockerd: Dockerd) -> str:
    """The Debian test image (bash, python3) in the session's dockerd."""
    try:
        return import_debian(dockerd)
    except DockerUnavailable as e:
        _unavailable(str(e))
        raise
