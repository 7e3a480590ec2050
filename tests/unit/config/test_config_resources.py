"""The resource grammar: ranges, memory sizes, CPU and GPU specs (SPEC §3, behaviour §2.3, §11)."""

from __future__ import annotations

import pytest
from config_testkit import FILENAME, error_of, parse, task

from dstack.config import (
    ConfigError,
    CPUSpec,
    GPUSpec,
    Memory,
    Range,
    ResourcesSpec,
    parse_cpu_spec,
    parse_gpu_spec,
    parse_memory_range,
    parse_resources_spec,
)


@pytest.mark.parametrize(
    ("text", "gb"),
    [("512MB", 0.5), ("16 Gb", 16.0), ("1 TB ", 1024.0), ("8", 8.0), ("1.5GB", 1.5), (4, 4.0), (0.25, 0.25)],
)
def test_memory_sizes_are_gb(text: str | float, gb: float) -> None:
    assert Memory.parse(text) == gb


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("8GB..", 8.0, None),
        ("..16GB", None, 16.0),
        ("512..1 TB", 512.0, 1024.0),
        ("512MB..2GB", 0.5, 2.0),
        ("16GB", 16.0, 16.0),
        (32, 32.0, 32.0),
    ],
)
def test_memory_ranges(text: str | int, low: float | None, high: float | None) -> None:
    memory = parse_memory_range(text)
    assert (memory.min, memory.max) == (low, high)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3..1", "Invalid memory range '3GB..1GB': min (3GB) is greater than max (1GB)"),
        ("..", "Invalid memory range '..': give at least one end, e.g. 2.. or ..8"),
        ("1...3", "Invalid memory range '1...3': use two dots between the ends, e.g. 2..8"),
        ("1.5xb", "Invalid memory size '1.5xb': use a number with MB, GB or TB (a bare number is GB)"),
        ("", "Invalid memory size '': use a number with MB, GB or TB"),
    ],
)
def test_bad_memory_ranges(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_memory_range(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "arch", "low", "high"),
    [
        ("4", None, 4, 4),
        ("4..", None, 4, None),
        ("..8", None, None, 8),
        ("2..8", None, 2, 8),
        ("x86:4..", "x86", 4, None),
        ("2..:ARM", "arm", 2, None),
        ("arm", "arm", 2, None),
        (16, None, 16, 16),
    ],
)
def test_cpu_specs(text: str | int, arch: str | None, low: int | None, high: int | None) -> None:
    cpu = parse_cpu_spec(text)
    assert (cpu.arch, cpu.count.min, cpu.count.max) == (arch, low, high)


def test_cpu_mapping_forms() -> None:
    assert parse(task("resources:\n  cpu: {min: 2, max: 8}\n")).resources == ResourcesSpec(
        cpu=CPUSpec(count=Range[int](min=2, max=8))
    )
    assert parse(task("resources:\n  cpu: {arch: arm, count: 4..}\n")).resources == ResourcesSpec(
        cpu=CPUSpec(arch="arm", count=Range[int](min=4))
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arm:x86", "Invalid CPU spec 'arm:x86': the arch is given twice ('arm' and 'x86')"),
        ("2:arm:2", "Invalid CPU spec '2:arm:2': the count is given twice ('2' and '2')"),
        ("2:foo", "Invalid CPU spec '2:foo': unknown architecture 'foo'; use x86 or arm"),
        ("x86:", "Invalid CPU spec 'x86:': it has an empty part; separate the parts with a single ':'"),
        ("8..2", "Invalid range '8..2': min (8) is greater than max (2)"),
        ("2.5", "Invalid range '2.5': use whole numbers"),
    ],
)
def test_bad_cpu_specs(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cpu_spec(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "vendor", "names", "memory", "count"),
    [
        ("A100:80GB:2", None, ["A100"], (80.0, 80.0), (2, 2)),
        ("24GB..:2", None, None, (24.0, None), (2, 2)),
        ("24GB..", None, None, (24.0, None), (1, None)),
        ("H100", None, ["H100"], None, (1, None)),
        ("A10,A10G:2", None, ["A10", "A10G"], None, (2, 2)),
        ("2:a100", None, ["A100"], None, (2, 2)),
        ("nvidia:16GB..32:1..", "nvidia", None, (16.0, 32.0), (1, None)),
        ("AMD:MI300X:8", "amd", ["MI300X"], None, (8, 8)),
        ("1..4", None, None, None, (1, 4)),
        (2, None, None, None, (2, 2)),
    ],
)
def test_gpu_specs(
    text: str | int,
    vendor: str | None,
    names: list[str] | None,
    memory: tuple[float, float | None] | None,
    count: tuple[int, int | None],
) -> None:
    gpu = parse_gpu_spec(text)
    assert gpu.vendor == vendor
    assert gpu.name == names
    assert (None if gpu.memory is None else (gpu.memory.min, gpu.memory.max)) == memory
    assert (gpu.count.min, gpu.count.max) == count


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A100:2:3", "Invalid GPU spec 'A100:2:3': the count is given twice ('2' and '3')"),
        (
            "Nvidia:A100:2:AMD",
            "Invalid GPU spec 'Nvidia:A100:2:AMD': the vendor is given twice ('nvidia' and 'amd')",
        ),
        ("A100:", "Invalid GPU spec 'A100:': it has an empty part; separate the parts with a single ':'"),
        ("A100,:2", "Invalid GPU name 'A100,': each name starts with a letter"),
        ("A100:H100", "Invalid GPU spec 'A100:H100': the name is given twice ('A100' and 'H100')"),
        ("24GB:16GB", "Invalid GPU spec '24GB:16GB': the memory is given twice ('24GB' and '16GB')"),
        ("", "Invalid GPU spec '': it is empty"),
        ("-1", "Invalid GPU spec '-1': '-1' is not a name, memory or count"),
        ("80XB", "Invalid memory size '80XB'"),
    ],
)
def test_bad_gpu_specs(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_gpu_spec(text)
    assert str(caught.value).startswith(message)


def test_gpu_mapping_form() -> None:
    resources = parse(
        task("resources:\n  gpu:\n    name: [a100, h100]\n    memory: 40GB..\n    count: 2\n")
    ).resources
    assert resources is not None
    assert resources.gpu == GPUSpec(
        name=["A100", "H100"], memory=Range[Memory](min=Memory(40)), count=Range[int](min=2, max=2)
    )


def test_gpu_spec_in_yaml_names_its_position() -> None:
    assert error_of(task("resources:\n  gpu: 'A100:2:3'\n")) == (
        f"{FILENAME}:3:8: Invalid GPU spec 'A100:2:3': the count is given twice ('2' and '3')"
    )


def test_range_errors_in_yaml_point_at_the_value() -> None:
    assert error_of(task("resources:\n  memory: 16GB..8GB\n")) == (
        f"{FILENAME}:3:11: Invalid memory range '16GB..8GB': min (16GB) is greater than max (8GB)"
    )
    assert error_of(task("resources:\n  cpu:\n    min: x\n")) == (
        f"{FILENAME}:4:10: Invalid range 'x': use whole numbers, e.g. 2, 2..8, 2.. or ..8"
    )


def test_shm_size_is_one_size_not_a_range() -> None:
    assert parse_resources_spec({"shm_size": "1GB"}).shm_size == 1.0
    message = error_of(task("resources:\n  shm_size: 1GB..\n"))
    assert message.startswith(f"{FILENAME}:3:13: Invalid memory size '1GB..'")


def test_disk_range() -> None:
    disk = parse_resources_spec({"disk": "100GB.."}).disk
    assert disk is not None and (disk.min, disk.max) == (100.0, None)


def test_specs_print_back_in_their_own_grammar() -> None:
    assert str(parse_gpu_spec("nvidia:A10,A10G:16GB..:2")) == "nvidia:A10,A10G:16GB..:2"
    assert str(parse_cpu_spec("x86:4..")) == "x86:4.."
    assert str(parse_memory_range("512MB..2GB")) == "512MB..2GB"


def test_ranges_serialise_to_json_numbers() -> None:
    resources = parse_resources_spec({"memory": "512MB..", "gpu": "A100:80GB"})
    assert resources.model_dump(mode="json") == {
        "cpu": None,
        "memory": {"min": 0.5, "max": None},
        "disk": None,
        "shm_size": None,
        "gpu": {
            "vendor": None,
            "name": ["A100"],
            "memory": {"min": 80.0, "max": 80.0},
            "count": {"min": 1, "max": None},
        },
    }


def test_range_contains() -> None:
    memory = parse_memory_range("8GB..16GB")
    assert memory.contains(8) and memory.contains(16) and not memory.contains(16.5) and not memory.contains(4)
