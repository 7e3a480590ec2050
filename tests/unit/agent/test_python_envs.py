"""Python environments and the build cache, through a real agent process and its HTTP API."""

from __future__ import annotations

import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_testkit import AgentClient, AgentProcess, agent_env, file_member, wait_for
from tests.e2e.envkit import make_wheel

StartAgent = Callable[..., AgentProcess]
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture
def agent(start_agent: StartAgent, tmp_path: Path) -> AgentProcess:
    return start_agent(tmp_path / "work", env=agent_env(**OFFLINE))


def _code(files: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [file_member(name, data) for name, data in files.items()]


def _wheel_bytes(tmp_path: Path, name: str) -> bytes:
    return make_wheel(tmp_path / "wheels", name).read_bytes()


def _run(
    client: AgentClient, commands: list[str], timeout: float = 120, **fields: object
) -> tuple[dict[str, object], str]:
    job = client.submit(commands, **fields)
    output = client.read_logs(job["id"], timeout=timeout).decode()
    return client.job(job["id"]), output


def test_each_python_job_gets_its_own_copy_of_its_versions_venv(agent: AgentProcess, tmp_path: Path) -> None:
    client = agent.client()
    wheel = make_wheel(tmp_path / "wheels", "dstack_probe")
    probe = "python -c 'import sys; print(sys.version_info[:2], sys.prefix)'"
    state, first = _run(client, [probe, "echo $VIRTUAL_ENV", f"pip install -q {wheel}"], python="3.10")
    assert state["status"] == "done", (state, first)
    version, prefix = first.splitlines()[0].split(") ")
    assert version == "(3, 10"
    runs = agent.work_dir / "envs" / "runs"
    assert Path(prefix).parent.parent == runs and Path(prefix).name == "venv"
    assert first.splitlines()[1] == prefix
    wait_for(lambda: not Path(prefix).exists(), 30, "the run's copy to go with the run")
    # The job's own PATH comes first in the job's env, but python must still be the venv's; and what the
    # first job installed is not in the second one's copy.
    check = "python -c 'import dstack_probe' 2>/dev/null && echo seen || echo unseen"
    state, second = _run(client, [probe, check], python="3.10", env={"PATH": "/usr/bin:/bin"})
    assert state["status"] == "done", (state, second)
    assert Path(second.splitlines()[0].split(") ")[1]).parent.parent == runs
    assert second.splitlines()[1] == "unseen"
    template = agent.work_dir / "envs" / "python" / "3.10"
    assert not list(template.rglob("dstack_probe*"))  # the template every copy is made from: unchanged


def test_a_copy_its_run_left_unchanged_serves_the_next_run_and_a_changed_one_never_does(
    agent: AgentProcess,
) -> None:
    client = agent.client()
    where = "echo $VIRTUAL_ENV"
    state, first = _run(client, [where], python="3.10")
    assert state["status"] == "done", (state, first)
    state, second = _run(client, [where], python="3.10")
    assert state["status"] == "done", (state, second)
    assert second == first  # left as it was made: the same copy, not made again
    # Edited in place, its size kept and its mtime put back (same inode, same folder times): only its
    # ctime tells. The next run must not get it.
    edit = (
        "a=$VIRTUAL_ENV/bin/activate; s=$(mktemp); touch -r $a $s; "
        "printf EDITEDxxx | dd of=$a bs=1 seek=2 conv=notrunc status=none; "
        "touch -r $s $a; rm $s; echo $VIRTUAL_ENV"
    )
    state, third = _run(client, [edit], python="3.10")
    assert state["status"] == "done" and third == first, (state, third)
    wait_for(lambda: not Path(first.strip()).exists(), 30, "the edited copy to be removed")
    check = "grep -c EDITEDxxx $VIRTUAL_ENV/bin/activate || true"
    state, fourth = _run(client, [where, check], python="3.10")
    assert state["status"] == "done", (state, fourth)
    assert fourth.splitlines() == [fourth.splitlines()[0], "0"] and fourth.splitlines()[0] != first.strip()
    # Two runs at once never share one.
    jobs = [client.submit(["sleep 1", where], python="3.10") for _ in range(2)]
    outputs = {client.read_logs(job["id"], timeout=120).decode() for job in jobs}
    assert len(outputs) == 2, outputs


def test_pip_in_a_tasks_venv_is_uvs_where_uv_can_and_pips_otherwise(
    agent: AgentProcess, tmp_path: Path
) -> None:
    client = agent.client()
    one = make_wheel(tmp_path / "wheels", "dstack_fast")
    two = make_wheel(tmp_path / "wheels", "dstack_slow")
    commands = [
        f"pip install {one}",  # uv's pip: it reports what it installed its own way
        f"DSTACK_PIP=pip pip install {two}",  # pip itself, on request
        "pip --version",  # no uv equivalent: pip itself
        "python -c 'import dstack_fast, dstack_slow; print(\"both\")'",
    ]
    state, output = _run(client, commands, python="3.12")
    assert state["status"] == "done", (state, output)
    assert "Installed 1 package" in output and "+ dstack-fast==1.0" in output
    assert (
        "Successfully installed dstack_slow-1.0" in output
        or "Successfully installed dstack-slow-1.0" in output
    )
    assert "pip " in output.split("Successfully installed")[1] and output.strip().endswith("both")


def test_concurrent_jobs_installing_two_versions_of_a_package_each_see_their_own(
    agent: AgentProcess, tmp_path: Path
) -> None:
    wheels = {v: make_wheel(tmp_path / f"wheels-{v}", "dstack_twice", version=v) for v in ("1.0", "2.0")}
    outputs: dict[str, str] = {}

    def run(version: str) -> None:
        commands = [
            f"pip install -q {wheels[version]}",
            "sleep 2",  # both are installed by now: each must still see its own
            "python -c 'import dstack_twice; print(dstack_twice.VERSION)'",
        ]
        outputs[version] = _run(agent.client(), commands, python="3.12")[1]

    threads = [threading.Thread(target=run, args=(v,)) for v in wheels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {v: o.strip().splitlines()[-1] for v, o in outputs.items()} == {"1.0": "1.0", "2.0": "2.0"}


def test_a_run_replacing_pip_in_its_venv_changes_no_other_runs_pip(
    agent: AgentProcess, tmp_path: Path
) -> None:
    # A template's copies share its pip (clones.py): a run that installs another pip must get it in its
    # own venv, first on its sys.path, and never in the template that the next run's copy shares.
    fake = make_wheel(tmp_path / "wheels", "pip", version="99.0")
    which = "python -c 'import pip; print(pip.__version__ if hasattr(pip, \"__version__\") else pip.VERSION)'"
    state, first = _run(client := agent.client(), [f"pip install -q {fake}", which], python="3.12")
    assert state["status"] == "done", (state, first)
    assert first.strip().splitlines()[-1] == "99.0"
    state, second = _run(client, [which, "pip --version"], python="3.12")
    assert state["status"] == "done", (state, second)
    version, real = second.strip().splitlines()
    assert version != "99.0" and real.startswith(f"pip {version} "), second
    template = agent.work_dir / "envs" / "python" / "3.12"
    assert not list(template.rglob("pip-99.0*"))


def test_a_version_the_host_lacks_fails_with_one_sentence(agent: AgentProcess) -> None:
    state, output = _run(agent.client(), ["python -V"], python="3.99")
    assert state["status"] == "failed"
    assert state["reason"] == "Python 3.99 is not installed on this host and downloads are turned off"
    assert state["reason_code"] == "environment_failed"
    assert output == ""


def test_build_policies(agent: AgentProcess, tmp_path: Path) -> None:
    client = agent.client()
    code_hash = client.upload(
        _code(
            {
                "requirements.txt": b"wheels/dstack_cached-1.0-py3-none-any.whl\n",
                "wheels/dstack_cached-1.0-py3-none-any.whl": _wheel_bytes(tmp_path, "dstack_cached"),
            }
        )
    )
    common = {"python": "3.12", "code_hash": code_hash, "build": ["pip install -q -r requirements.txt"]}
    use = ["python -c 'import dstack_cached, sys; print(sys.prefix)'"]

    state, output = _run(client, use, build_policy="use-build", **common)
    assert (state["status"], state["reason_code"], output) == ("failed", "build_not_found", "")

    state, output = _run(client, use, build_policy="build", **common)
    assert state["status"] == "done", (state, output)
    runs, builds = agent.work_dir / "envs" / "runs", agent.work_dir / "envs" / "builds"
    assert Path(output.splitlines()[-1]).is_relative_to(runs)  # the run's own copy of what it built
    (built,) = [p for p in builds.glob("*/b-*")]

    state, output = _run(client, use, build_policy="use-build", **common)
    assert state["status"] == "done" and output.splitlines()[0].startswith("Using cached build ")
    assert Path(output.splitlines()[-1]).is_relative_to(runs)

    # A forced rebuild makes a new environment; the old one goes once no job uses it.
    state, output = _run(client, use, build_policy="force-build", **common)
    assert state["status"] == "done", (state, output)
    assert not built.exists()
    key_dirs = list(builds.iterdir())
    assert len(key_dirs) == 1
    assert len([p for p in key_dirs[0].iterdir() if p.name.startswith("b-")]) == 1


def test_a_run_changes_its_copy_of_a_cached_build_never_the_cache(
    agent: AgentProcess, tmp_path: Path
) -> None:
    client = agent.client()
    v1, v2 = (make_wheel(tmp_path / f"w{v}", "dstack_pinned", version=v) for v in ("1.0", "2.0"))
    code_hash = client.upload(_code({"requirements.txt": b"wheels/dstack_pinned-1.0-py3-none-any.whl\n",
                                      "wheels/dstack_pinned-1.0-py3-none-any.whl": v1.read_bytes(),
                                      "v2/dstack_pinned-2.0-py3-none-any.whl": v2.read_bytes()}))  # fmt: skip
    common = {"python": "3.12", "code_hash": code_hash, "build": ["pip install -q -r requirements.txt"]}
    show = "python -c 'import dstack_pinned; print(dstack_pinned.VERSION)'"
    state, output = _run(client, [show], build_policy="build", **common)
    assert state["status"] == "done" and output.splitlines()[-1] == "1.0", (state, output)
    changed = [
        "pip install -q --force-reinstall v2/dstack_pinned-2.0-py3-none-any.whl",
        "pip uninstall -y -q pip",
        show,
    ]
    state, output = _run(client, changed, build_policy="use-build", **common)
    assert state["status"] == "done" and output.splitlines()[-1] == "2.0", (state, output)
    state, output = _run(client, [show, "python -m pip --version > /dev/null && echo pip-still-there"],
                         build_policy="use-build", **common)  # fmt: skip
    assert state["status"] == "done", (state, output)
    assert output.splitlines()[-2:] == ["1.0", "pip-still-there"]


def test_a_failing_build_leaves_nothing_cached(agent: AgentProcess) -> None:
    client = agent.client()
    common = {"python": "3.12", "build": ["echo partial", "exit 5"]}
    state, output = _run(client, ["echo never"], build_policy="build", **common)
    assert state["status"] == "failed" and state["reason_code"] == "build_failed"
    assert state["reason"] == "The build commands failed with exit code 5"
    assert output.splitlines()[1:] == ["partial"]
    state, _ = _run(client, ["echo never"], build_policy="use-build", **common)
    assert state["reason_code"] == "build_not_found"
    builds = agent.work_dir / "envs" / "builds"
    assert [p for p in builds.rglob("b-*")] == []


def test_stopping_a_job_during_its_build(agent: AgentProcess) -> None:
    client = agent.client()
    build = ["echo building", "sleep 60"]
    job = client.submit(["echo never"], python="3.12", build=build, build_policy="build")
    logs = f"/api/jobs/{job['id']}/logs?offset=0"
    wait_for(lambda: b"building" in client.request("GET", logs).body, 60, "the build to start")
    assert client.stop(job["id"], grace_seconds=5).status == 202
    state = client.wait_final(job["id"], 30)
    assert (state["status"], state["reason"]) == ("terminated", "Stopped by request")
    assert [p for p in (agent.work_dir / "envs" / "builds").rglob("b-*")] == []


def test_concurrent_builds_of_one_key_build_once(agent: AgentProcess) -> None:
    client_a, client_b = agent.client(), agent.client()
    spec = {"python": "3.12", "build": ["echo built-once", "sleep 1"], "build_policy": "build"}
    outputs: dict[str, str] = {}

    def run(name: str, client: AgentClient) -> None:
        outputs[name] = _run(client, ["echo ran"], **spec)[1]

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in (("a", client_a), ("b", client_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(o.count("built-once") for o in outputs.values()) == [0, 1], outputs
    assert all(o.splitlines()[-1] == "ran" for o in outputs.values()), outputs


def test_cache_survives_an_agent_restart(start_agent: StartAgent, tmp_path: Path) -> None:
    work = tmp_path / "work"
    spec = {"python": "3.12", "build": ["echo built"]}
    first = start_agent(work, env=agent_env(**OFFLINE))
    state, _ = _run(first.client(), ["true"], build_policy="build", **spec)
    assert state["status"] == "done"
    assert first.terminate() == 0
    second = start_agent(work, env=agent_env(**OFFLINE))
    state, output = _run(second.client(), ["true"], build_policy="use-build", **spec)
    assert state["status"] == "done" and output.startswith("Using cached build "), (state, output)


def test_a_plan_can_ask_whether_a_build_is_cached(agent: AgentProcess, tmp_path: Path) -> None:
    from dstack.agent.environments.buildkey import build_inputs

    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "requirements.txt").write_text("# nothing to install\n")
    build = ['echo "${MODE}"', "pip install -q -r requirements.txt"]

    def lookup(mode: str) -> dict[str, object]:
        inputs = build_inputs(".", build, folder, folder, {"MODE": mode, "OTHER": "x"}, [])
        response = agent.client().request(
            "POST", "/api/builds/lookup", body={"python": "3.12", "inputs": inputs}
        )
        assert response.status == 200, response.body
        return response.json()

    assert lookup("fast") == {"cached": False, "key": None}
    client = agent.client()
    code_hash = client.upload(_code({"requirements.txt": b"# nothing to install\n"}))
    state, _ = _run(client, ["true"], python="3.12", code_hash=code_hash, build=build,
                    build_policy="build", env={"MODE": "fast"})  # fmt: skip
    assert state["status"] == "done", state
    assert lookup("fast")["cached"] is True  # what the CLI computes is what the agent built
    assert lookup("slow")["cached"] is False  # another value of a variable the build refers to
    (folder / "requirements.txt").write_text("requests\n")
    assert lookup("fast")["cached"] is False  # another requirements file
    bad = client.request("POST", "/api/builds/lookup", body={"python": "3.12", "inputs": {"x": 1}})
    assert bad.status == 400


def test_an_agent_from_its_zipapp_gives_runs_their_own_venvs(tmp_path: Path) -> None:
    # How remote hosts run the agent (dstack.server.remote.artifact): nothing is read from its files.
    from dstack.server.remote.artifact import agent_zipapp

    zipapp = agent_zipapp(tmp_path / "artifact").path
    env = agent_env(**OFFLINE)
    env["PYTHONPATH"] = str(zipapp)  # `python -m dstack.agent` imports it from the zip only
    agent = AgentProcess(tmp_path / "work", env=env).wait_ready()
    try:
        wheel = make_wheel(tmp_path / "wheels", "dstack_zipped")
        check = "python -c 'import dstack_zipped, sys; print(sys.prefix)'"
        state, output = _run(agent.client(), [f"pip install -q {wheel}", check], python="3.12")
        assert state["status"] == "done", output
        assert Path(output.split()[-1]).parent.parent == tmp_path / "work" / "envs" / "runs"
        pip = (tmp_path / "work" / "envs" / "python" / "3.12" / "bin" / "pip").read_text()
        assert "uv's pip where uv can do what was asked" in pip  # the shim, read from the zip
    finally:
        agent.terminate()
