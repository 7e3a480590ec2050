"""Fleets end to end: the user's own hosts (real sshd's in their own network and mount namespaces, with
nothing but Debian's python3), applied and used through the real `dstack` command."""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.fleetkit import FLEET, apply, logs, task, wait_logs, wait_status, write_fleet
from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.portkit import Attached, free_port
from tests.infra.sshhosts import ClientKey, SSHHost, make_key

pytestmark = pytest.mark.e2e


def test_a_fleet_is_applied_and_its_hosts_run_tasks(
    dstack_env: DstackEnv, project_dir: Path, fleet_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    one_cpu, two_cpus = fleet_hosts
    fleet = write_fleet(dstack_env.home, fleet_hosts, client_key, users={1: "ubuntu"})
    # As a user types it: the plan, then the question.
    result = dstack_env.run("apply", "-f", "fleet.dstack.yml", cwd=dstack_env.home, input="y\n", timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"{one_cpu.address}\s+root\s+add", result.stderr)
    assert re.search(rf"{two_cpus.address}\s+ubuntu\s+add", result.stderr)
    assert "Apply the fleet? [y/n]" in result.stderr
    assert re.search(rf"{one_cpu.address}\s+idle\s+1 CPU, \d+GB memory, no GPU", result.stdout), result.stdout
    assert re.search(rf"{two_cpus.address}\s+idle\s+2 CPUs, \d+GB memory", result.stdout), result.stdout
    listed = dstack_env.run("fleet", check=True).stdout
    assert re.search(rf"{FLEET}\s+{one_cpu.address}\s+idle", listed) and two_cpus.address in listed
    # Applying the same file again changes nothing.
    again = apply(dstack_env, fleet)
    assert again.returncode == 0 and "keep" in again.stderr and "add" not in again.stderr

    # The code travels to the host; the task sees the host's own hostname.
    (project_dir / "data.txt").write_text("from the user's machine\n")
    task(project_dir, ["hostname", "cat data.txt", "id -un"])
    run = dstack_env.run("run", ".", "-y", "--fleet", FLEET, "-n", "where", cwd=project_dir, timeout=300)
    assert run.returncode == 0, run.stderr
    assert re.search(rf"1\s+ssh\s+{FLEET}\s+10\.250\.", run.stderr)  # BACKEND REGION INSTANCE
    lines = run.stdout.splitlines()
    assert lines[0] in (one_cpu.hostname, two_cpus.hostname) and lines[1] == "from the user's machine"
    assert lines[2] == ("root" if lines[0] == one_cpu.hostname else "ubuntu")
    # A request only one host fits goes there (-b ssh, as --fleet, keeps it off this machine).
    run = dstack_env.run("run", ".", "-y", "-b", "ssh", "--cpu", "2", cwd=project_dir, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == two_cpus.hostname
    assert one_cpu.address not in run.stderr  # not even offered

    # Two tasks asking for a whole CPU each run at once, one per host.
    task(project_dir, ["hostname", "sleep 300"], name="busy.dstack.yml")
    for name in ("busy-a", "busy-b"):
        submitted = dstack_env.run(
            "run", ".", "-f", "busy.dstack.yml", "-y", "-d", "--cpu", "1", "--fleet", FLEET, "-n", name,
            cwd=project_dir, timeout=300,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
    hosts_of = {name: wait_logs(dstack_env, name, "host").strip() for name in ("busy-a", "busy-b")}
    assert set(hosts_of.values()) == {one_cpu.hostname, two_cpus.hostname}
    listed = dstack_env.run("fleet", check=True).stdout
    assert re.search(rf"{one_cpu.address}\s+busy.+busy-", listed), listed
    # A third one needs all of the bigger host, half of which is held: with a retry limit it waits.
    waiting = dstack_env.run(
        "run", ".", "-y", "-d", "--cpu", "2", "--fleet", FLEET, "-n", "third", "--retry-limit", "5m",
        cwd=project_dir, timeout=300,
    )  # fmt: skip
    assert waiting.returncode == 0, waiting.stderr
    assert wait_status(dstack_env, "third", ("pending",))["status"] == "pending"
    on_two = next(name for name, hostname in hosts_of.items() if hostname == two_cpus.hostname)
    on_one = next(name for name in hosts_of if name != on_two)
    dstack_env.run("stop", on_two, "-y", check=True)
    assert wait_status(dstack_env, "third", ("done",), timeout=180)["status"] == "done"
    assert logs(dstack_env, "third").splitlines()[0] == two_cpus.hostname
    dstack_env.run("stop", on_one, "-x", "-y", check=True)
    assert wait_status(dstack_env, on_one, ("aborted",))["status"] == "aborted"
    # Stopped means stopped on the host.
    for host in fleet_hosts:
        wait_for(lambda h=host: not h.processes_with_env("DSTACK_RUN_NAME=busy-"), timeout=30, what="tasks")

    # The file edited: the host that left is removed, its agent stopped.
    smaller = write_fleet(dstack_env.home, [two_cpus], client_key, users={0: "ubuntu"})
    result = apply(dstack_env, smaller)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"{one_cpu.address}\s+remove", result.stderr) and "keep" in result.stderr
    listed = dstack_env.run("fleet", check=True).stdout
    assert two_cpus.address in listed and one_cpu.address not in listed
    wait_for(lambda: not one_cpu.agent_pids(), timeout=60, what="the removed host's agent to stop")


def test_a_task_on_the_hosts_loopback_answers_on_the_users_machine(
    dstack_env: DstackEnv, project_dir: Path, fleet_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    host = fleet_hosts[1]  # two CPUs: a task asks for 2.. by default
    assert apply(dstack_env, write_fleet(dstack_env.home, [host], client_key)).returncode == 0
    port, local = 8731, free_port()
    task(
        project_dir,
        ["hostname > index.html", f"python3 -m http.server {port} --bind 127.0.0.1"],
        extra=f"ports:\n  - {port}\n",
    )
    attached = Attached(
        dstack_env, "run", ".", "-y", "--fleet", FLEET, "-p", f"{local}:{port}", cwd=project_dir
    )
    try:
        url = attached.wait_for(rf"Port {port} is up at (http://127\.0\.0\.1:{local})").group(1)
        with urllib.request.urlopen(url + "/index.html", timeout=60) as response:
            assert response.read().decode().strip() == host.hostname
        # Only through the forward: nothing listens on the host's network address.
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{host.address}:{port}/", timeout=5)
    finally:
        attached.stop()


def test_hosts_that_cannot_serve_are_refused_each_with_one_sentence(
    dstack_env: DstackEnv, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey, tmp_path: Path
) -> None:
    good = make_ssh_host()
    no_python = make_ssh_host(python=False)
    small = make_ssh_host(home_size="64m")
    no_forwarding = make_ssh_host()
    no_forwarding.sshd_config["AllowTcpForwarding"] = "no"
    no_forwarding.stop_sshd()
    no_forwarding.start_sshd()
    wrong_key = make_ssh_host(authorize=False)
    other_key = make_key(tmp_path / "other_key")
    absent = f"10.250.{good.address.split('.')[2]}.250"  # in the test network, held by no host
    fleet = dstack_env.home / "faults.dstack.yml"
    fleet.write_text(
        "type: fleet\nname: faults\nssh_config:\n"
        f"  identity_file: {client_key.path}\n  hosts:\n"
        f"    - {good.address}\n    - {no_python.address}\n    - {small.address}\n"
        f"    - {no_forwarding.address}\n    - {absent}\n"
        f"    - hostname: {wrong_key.address}\n      identity_file: {other_key.path}\n"
        f"    - hostname: {good.address}\n      port: 2222\n"
    )
    result = apply(dstack_env, fleet)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    plan_row = re.compile(r"\s(add|keep|connect again|remove)\s*$")
    lines = [line for line in result.stderr.splitlines() if not plan_row.search(line)]

    def said(address: str) -> str:
        """The one line about the host (its address as the fleet names it, port included)."""
        found = [line for line in lines if re.search(rf"{re.escape(address)}(?![\d:])", line)]
        assert len(found) == 1, result.stderr
        return found[0]

    assert "has no Python 3.9 or newer" in said(no_python.address)
    assert "MB free" in said(small.address) and "free some disk space" in said(small.address)
    assert "AllowTcpForwarding" in said(no_forwarding.address)
    assert re.search("did not answer|is unreachable|did not complete the SSH handshake", said(absent))
    assert f"refused the key {other_key.path}" in said(wrong_key.address)
    assert "refused the connection on port 2222" in said(good.address)  # (only that one is not ready)
    assert "6 of 7 hosts of fleet faults are not ready (1 ready)" in result.stderr
    # dstack fleet says the same; the good host takes tasks.
    listed = dstack_env.run("fleet", check=True).stdout
    assert re.search(rf"{good.address}\s+idle", listed)
    assert re.search(rf"{no_python.address}\s+failed: .*Python 3\.9", listed), listed
    # An unknown user is refused as a key is (OpenSSH does not tell them apart), naming the user.
    fleet.write_text(
        "type: fleet\nname: faults\nssh_config:\n"
        f"  identity_file: {client_key.path}\n  user: nosuchuser\n  hosts:\n    - {good.address}\n"
    )
    result = apply(dstack_env, fleet)
    assert result.returncode == 1 and f"nosuchuser@{good.address} refused the key" in result.stderr


def test_a_changed_host_key_is_refused(
    dstack_env: DstackEnv, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey
) -> None:
    host = make_ssh_host()
    fleet = write_fleet(dstack_env.home, [host], client_key)
    assert apply(dstack_env, fleet).returncode == 0
    host.stop_sshd()  # reinstalled: a new host key
    host.new_host_key()
    host.start_sshd()
    wait_for(lambda: "host key" in dstack_env.run("fleet").stdout, timeout=120, what="the host to be refused")
    listed = dstack_env.run("fleet", check=True).stdout
    assert re.search(rf"{host.address}\s+failed: The host key of {host.address} has changed", listed), listed
    result = apply(dstack_env, fleet)  # applying again does not pin the new key silently either
    assert result.returncode == 1
    assert f"The host key of {host.address} has changed since it was pinned" in result.stderr
    assert "known_hosts" in result.stderr


def test_no_secret_of_the_server_reaches_a_host_or_its_tasks(
    dstack_env: DstackEnv, project_dir: Path, fleet_hosts: list[SSHHost], client_key: ClientKey
) -> None:
    import sqlite3

    host = fleet_hosts[1]
    # This machine turned off: only the fleet runs tasks (no --fleet needed).
    (dstack_env.home / ".dstack" / "server").mkdir(parents=True)
    (dstack_env.home / ".dstack" / "server" / "config.yml").write_text("backends: []\n")
    assert apply(dstack_env, write_fleet(dstack_env.home, [host], client_key)).returncode == 0
    task(project_dir, ["env", "hostname"])
    run = dstack_env.run("run", ".", "-y", cwd=project_dir, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "local" not in run.stderr and re.search(rf"1\s+ssh\s+{FLEET}\s+{host.address}", run.stderr)
    assert run.stdout.splitlines()[-1] == host.hostname
    assert "DSTACK_AGENT" not in run.stdout  # the agent's own settings stay the agent's
    admin = re.search(r'"token":\s*"([^"]+)"', (dstack_env.home / ".dstack" / "config.yml").read_text())
    assert admin is not None
    database = sqlite3.connect(dstack_env.home / ".dstack" / "server" / "data" / "sqlite.db")
    (agent_token,) = database.execute("SELECT agent_token FROM hosts WHERE backend = 'ssh'").fetchone()
    database.close()
    assert admin.group(1) not in run.stdout and agent_token not in run.stdout
    assert "DSTACK_SERVER_ADMIN_TOKEN" not in run.stdout and "DSTACK_AGENT_TOKEN" not in run.stdout
    for pid in host.pids():  # the agent and everything else there: no token in an argv or environment
        for part in ("cmdline", "environ"):
            with contextlib.suppress(OSError):  # (a process that ended meanwhile)
                data = Path(f"/proc/{pid}/{part}").read_bytes()
                assert admin.group(1).encode() not in data and agent_token.encode() not in data


def test_a_host_down_at_apply_joins_the_fleet_when_it_answers(
    dstack_env: DstackEnv, project_dir: Path, make_ssh_host: Callable[..., SSHHost], client_key: ClientKey
) -> None:
    host = make_ssh_host()
    host.ns.cut()  # its network is down
    try:
        result = apply(dstack_env, write_fleet(dstack_env.home, [host], client_key))
        assert result.returncode == 1, result.stderr
        assert "did not answer" in result.stderr or "is unreachable" in result.stderr, result.stderr
        assert re.search(rf"{host.address}\s+unreachable", dstack_env.run("fleet", check=True).stdout)
    finally:
        host.ns.restore()
    wait_for(
        lambda: re.search(rf"{host.address}\s+idle", dstack_env.run("fleet").stdout),
        timeout=120,
        what="the host to join once it answers",
    )
    task(project_dir, ["hostname"])
    run = dstack_env.run("run", ".", "-y", "--fleet", FLEET, cwd=project_dir, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == host.hostname, run.stderr
