"""The agent's GPU detection (nvidia-smi / rocm-smi output) and its cgroup limits for process jobs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dstack.agent.gpus import parse_nvidia_csv, parse_rocm_json
from dstack.agent.limits import Cgroups

NVIDIA_SMI = """\
0, NVIDIA H100 80GB HBM3, 81559, GPU-5d5e1a4a-0c0f-2f0e-2f8b-7a1b4e1c9a11
1, NVIDIA H100 80GB HBM3, 81559, GPU-9a4d6a0e-3f3c-4c43-8d4b-0e5f9d2b7c22
"""


def test_nvidia_smi_csv() -> None:
    gpus = parse_nvidia_csv(NVIDIA_SMI)
    assert [(g["index"], g["name"], g["vendor"]) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", "nvidia"),
        (1, "NVIDIA H100 80GB HBM3", "nvidia"),
    ]
    assert gpus[0]["memory_bytes"] == 81559 * 1024 * 1024
    assert gpus[1]["uuid"] == "GPU-9a4d6a0e-3f3c-4c43-8d4b-0e5f9d2b7c22"


def test_nvidia_smi_oddities_do_not_break_detection() -> None:
    text = "0, GRID A100D-40C, [N/A], GPU-1\nNo devices were found\n\n"
    assert [(g["index"], g["memory_bytes"]) for g in parse_nvidia_csv(text)] == [(0, 0)]
    assert parse_nvidia_csv("") == []


def test_rocm_smi_json() -> None:
    text = json.dumps(
        {
            "card1": {"Card series": "AMD Instinct MI300X", "VRAM Total Memory (B)": "206141652992"},
            "card0": {"Card Series": "Instinct MI300X", "VRAM Total Memory (B)": "206141652992"},
            "system": {"Driver version": "6.7.0"},
        }
    )
    gpus = parse_rocm_json(text)
    assert [(g["index"], g["name"], g["vendor"]) for g in gpus] == [
        (0, "AMD Instinct MI300X", "amd"),
        (1, "AMD Instinct MI300X", "amd"),
    ]
    assert gpus[0]["memory_bytes"] == 206141652992
    assert parse_rocm_json("not json") == [] and parse_rocm_json("[]") == []


# -- cgroups ------------------------------------------------------------------------------------------

V1_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTINFO = "41 31 0:38 / {root} rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def fake_cgroupfs(tmp_path: Path, mountinfo: str, cgroup: str) -> Cgroups:
    """A cgroup tree made of plain folders: checks which files get which values, not the kernel."""
    (tmp_path / "mountinfo").write_text(mountinfo.format(root=tmp_path / "fs"))
    (tmp_path / "cgroup").write_text(cgroup)
    return Cgroups(mountinfo=str(tmp_path / "mountinfo"), cgroup=str(tmp_path / "cgroup"))


def test_v1_job_groups_live_under_the_agents_own_groups(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    (fs / "cpu").mkdir(parents=True)
    (fs / "memory" / "box").mkdir(parents=True)
    cgroups = fake_cgroupfs(tmp_path, V1_MOUNTINFO, "4:memory:/box\n2:cpu,cpuacct:/\n0::/\n")
    assert cgroups.mechanism() == "cgroup v1"
    group = cgroups.create("m1", 1.5, 512 * 1024 * 1024)
    assert group is not None
    cpu, memory = fs / "cpu" / "dstack-job-m1", fs / "memory" / "box" / "dstack-job-m1"
    assert group.dirs == (str(cpu), str(memory))
    assert (cpu / "cpu.cfs_quota_us").read_text() == "150000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (memory / "memory.limit_in_bytes").read_text() == str(512 * 1024 * 1024)
    assert cgroups.create("m2", None, None) is None  # nothing to cap: no cgroup at all


def test_v2_job_groups_are_siblings_of_the_agents_group(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    agent = fs / "user.slice" / "session-1.scope"
    agent.mkdir(parents=True)
    (agent / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cgroups = fake_cgroupfs(tmp_path, V2_MOUNTINFO, "0::/user.slice/session-1.scope\n")
    assert cgroups.mechanism() == "cgroup v2"
    group = cgroups.create("m1", 2, 1024**3)
    assert group is not None
    jobs = fs / "user.slice" / "dstack-jobs"
    assert (jobs / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert group.dirs == (str(jobs / "dstack-job-m1"),)
    assert (jobs / "dstack-job-m1" / "cpu.max").read_text() == "200000 100000"
    assert (jobs / "dstack-job-m1" / "memory.max").read_text() == str(1024**3)


def test_v2_without_delegated_controllers_enforces_nothing(tmp_path: Path) -> None:
    agent = tmp_path / "fs" / "app.scope"
    agent.mkdir(parents=True)
    (agent / "cgroup.controllers").write_text("pids\n")
    cgroups = fake_cgroupfs(tmp_path, V2_MOUNTINFO, "0::/app.scope\n")
    assert cgroups.mechanism() is None
    assert "not delegated" in cgroups.reason
    assert cgroups.create("m1", 1, None) is None


def test_no_cgroup_fs_enforces_nothing(tmp_path: Path) -> None:
    cgroups = fake_cgroupfs(tmp_path, "22 1 0:21 / /proc rw - proc proc rw\n", "")
    assert cgroups.mechanism() is None


def _real_v1_writable() -> bool:
    return (
        os.geteuid() == 0
        and Path("/sys/fs/cgroup/cpu/cgroup.procs").exists()
        and Cgroups().mechanism() == ("cgroup v1")
    )


@pytest.mark.skipif(not _real_v1_writable(), reason="needs root and a writable cgroup v1 hierarchy")
def test_a_real_process_is_capped_by_the_kernel() -> None:
    cgroups = Cgroups()
    group = cgroups.create(f"unit-{os.getpid()}", 0.5, 64 * 1024 * 1024)
    assert group is not None
    try:
        shown = subprocess.run(
            group.wrap(["sh", "-c", "cat /proc/self/cgroup"]), capture_output=True, text=True, check=True
        ).stdout
        assert f"dstack-job-unit-{os.getpid()}" in shown
        # Over the memory cap, the kernel kills the process.
        hog = subprocess.run(
            group.wrap(["python3", "-c", "x = bytearray(256 * 1024 * 1024)"]), capture_output=True
        )
        assert hog.returncode == -9
    finally:
        cgroups.remove(f"unit-{os.getpid()}")
    assert not any(Path(d).exists() for d in group.dirs)
