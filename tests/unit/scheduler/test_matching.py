"""Whether a host can ever run a task: ranges, GPU names, memory and counts, price, spot, backends."""

from __future__ import annotations

import pytest
from scheduler_testkit import host, req

from dstack.server.backends.base import CAP_CONTAINERS
from dstack.server.scheduler.gpu_names import gpu_aliases, gpu_name_matches, gpu_short_name
from dstack.server.scheduler.placement import mismatch, misses


@pytest.mark.parametrize(
    ("reported", "short"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA RTX A6000", "A6000"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA H100 NVL", "H100"),
        ("AMD Instinct MI300X", "MI300X"),
        ("H100", "H100"),
    ],
)
def test_driver_names_have_catalog_names(reported: str, short: str) -> None:
    assert gpu_short_name(reported) == short
    assert gpu_name_matches(short, reported)
    assert gpu_name_matches(short.lower(), reported)


@pytest.mark.parametrize(
    ("asked", "reported"),
    [
        ("A10", "NVIDIA A100-SXM4-80GB"),
        ("A100", "NVIDIA A10G"),
        ("A10", "NVIDIA A10G"),
        ("H100", "NVIDIA H200"),
        ("T4", "NVIDIA L4"),
        ("RTX4090", "NVIDIA GeForce RTX 4080"),
    ],
)
def test_names_match_whole_models_only(asked: str, reported: str) -> None:
    assert not gpu_name_matches(asked, reported), gpu_aliases(reported)


def test_a_full_name_and_a_series_name_match_too() -> None:
    assert gpu_name_matches("RTXA6000", "NVIDIA RTX A6000")
    assert gpu_name_matches("RTX 4090", "NVIDIA GeForce RTX 4090")
    assert gpu_name_matches("H100NVL", "NVIDIA H100 NVL")


def test_cpu_and_memory_ranges_need_the_minimum() -> None:
    machine = host(cpus=8, memory_gb=64)
    assert mismatch(req(cpu="8"), machine) is None
    assert mismatch(req(cpu="4..16"), machine) is None  # the maximum caps the task; it does not exclude
    assert mismatch(req(cpu="9.."), machine) == "cpu"
    assert mismatch(req(memory="64GB"), machine) is None
    assert mismatch(req(memory="..128GB"), machine) is None
    assert mismatch(req(memory="65GB.."), machine) is None  # within what MemTotal leaves out
    assert mismatch(req(memory="70GB.."), machine) == "memory"


def test_defaults_ask_for_two_cpus_and_8gb() -> None:
    assert mismatch(req(), host(cpus=2, memory_gb=7.8)) is None
    assert mismatch(req(), host(cpus=1, memory_gb=24)) == "cpu"
    assert mismatch(req(), host(cpus=4, memory_gb=4)) == "memory"


def test_disk_is_free_disk() -> None:
    assert mismatch(req(disk="100GB.."), host(disk_gb=150)) is None
    assert mismatch(req(disk="200GB.."), host(disk_gb=150)) == "disk"


def test_gpu_names_counts_memory_and_vendor() -> None:
    two_h100 = host(gpus=[("NVIDIA H100 80GB HBM3", 79.6), ("NVIDIA H100 80GB HBM3", 79.6)])
    assert mismatch(req(gpu="1"), two_h100) is None
    assert mismatch(req(gpu="H100:2"), two_h100) is None
    assert mismatch(req(gpu="H100:3"), two_h100) == "gpu"
    assert mismatch(req(gpu="A100"), two_h100) == "gpu"
    assert mismatch(req(gpu="A100,H100"), two_h100) is None
    # A driver reports a little less than the nominal size: 80GB still fits an "80GB" H100.
    assert mismatch(req(gpu="80GB"), two_h100) is None
    assert mismatch(req(gpu="80GB..:2"), two_h100) is None
    assert mismatch(req(gpu="96GB.."), two_h100) == "gpu"
    assert mismatch(req(gpu="..40GB"), two_h100) == "gpu"
    assert mismatch(req(gpu="nvidia:H100"), two_h100) is None
    assert mismatch(req(gpu="amd"), two_h100) == "gpu"
    assert mismatch(req(gpu="1"), host()) == "gpu"


def test_gpu_zero_means_no_gpu() -> None:
    assert mismatch(req(gpu="0"), host()) is None


def test_price_and_spot() -> None:
    paid = host(price=2.5)
    assert mismatch(req(max_price=3.0), paid) is None
    assert mismatch(req(max_price=2.0), paid) == "price"
    assert mismatch(req(), host(spot=True)) == "on-demand"  # on-demand is the default policy
    assert mismatch(req(spot_policy="spot"), host()) == "spot"
    assert mismatch(req(spot_policy="auto"), host(spot=True)) is None
    assert mismatch(req(spot_policy="auto"), host()) is None


def test_backends_regions_containers_and_arch() -> None:
    assert mismatch(req(backends=["local"]), host()) is None
    assert mismatch(req(backends=["ssh"]), host()) == "backend"
    assert mismatch(req("regions: [eu]\n"), host()) == "region"
    assert mismatch(req(image=True), host()) == "containers"
    assert mismatch(req(image=True), host(capabilities=frozenset({CAP_CONTAINERS}))) is None
    assert mismatch(req(cpu="arm:2"), host()) == "arch"
    assert mismatch(req(cpu="x86:2"), host()) is None
    assert mismatch(req(cpu="arm:2"), host(arch="aarch64")) is None


def test_every_miss_is_listed_most_decisive_first() -> None:
    assert misses(req(gpu="A100", memory="128GB", max_price=1.0), host(price=2)) == ["price", "memory", "gpu"]


def test_configuration_resources_and_flags_reach_the_requirements() -> None:
    asked = req("resources:\n  gpu: A100:40GB:2\n  memory: 16GB..\n", cpu="4")
    assert asked.gpu is not None and asked.gpu.names == ("A100",)
    assert asked.gpu.count.min == 2 and asked.gpu.memory_gb is not None and asked.gpu.memory_gb.min == 40
    assert asked.memory_gb.min == 16 and asked.memory_explicit
    assert asked.cpu.min == 4 and asked.cpu.max == 4 and asked.cpu_explicit
    assert not req().cpu_explicit and not req().memory_explicit
