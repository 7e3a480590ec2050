"""Resources an admin declares in ~/.dstack/server/config.yml: parsed into the agent's fingerprint keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack.server.config_file import ServerConfigError, load_server_config
from dstack.server.scheduler.model import GB, Host


def load(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return load_server_config(path).backends[0].resources


def error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ServerConfigError) as caught:
        load_server_config(path)
    return str(caught.value).removeprefix(f"{path}: ")


def test_a_fresh_server_writes_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    config = load_server_config(path)
    assert path.exists() and [b.type for b in config.backends] == ["local"]
    assert config.backends[0].resources == {} and config.backends[0].price == 0


def test_gpu_shorthand_declares_real_gpus(tmp_path: Path) -> None:
    declared = load(tmp_path, "backends:\n  - type: local\n    resources:\n      gpus: H100:80GB:2\n")
    host = Host.from_resources(id="h", backend="local", name="local", resources={"cpus": 2, **declared})
    assert [(g.index, g.name, g.memory_gb, g.vendor) for g in host.gpus] == [
        (0, "H100", 80, "nvidia"),
        (1, "H100", 80, "nvidia"),
    ]


def test_gpus_as_a_list_or_a_mapping_with_a_count(tmp_path: Path) -> None:
    listed = load(
        tmp_path,
        "backends:\n  - type: local\n    resources:\n      gpus:\n"
        "        - {name: A100, memory: 40GB}\n        - {name: MI300X, memory: 192GB, vendor: AMD}\n",
    )
    assert [(g["name"], g["memory_bytes"] // GB, g["vendor"]) for g in listed["gpus"]] == [
        ("A100", 40, "nvidia"),
        ("MI300X", 192, "amd"),
    ]
    counted = load(
        tmp_path,
        "backends:\n  - type: local\n    resources:\n      gpus: {name: L4, memory: 24GB, count: 3}\n",
    )
    assert [g["index"] for g in counted["gpus"]] == [0, 1, 2]


def test_cpus_memory_disk_and_price(tmp_path: Path) -> None:
    text = "backends:\n  - type: local\n    price: 1.25\n    resources: {cpus: 8, memory: 64GB, disk: 1TB}\n"
    declared = load(tmp_path, text)
    assert declared == {"cpus": 8, "memory_bytes": 64 * GB, "disk_free_bytes": 1024 * GB}
    path = tmp_path / "config.yml"
    assert load_server_config(path).backends[0].price == 1.25


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            "{gpus: H100:2}",
            "backends.0.resources.gpus: 'H100:2' needs a name and a memory size; use NAME:MEMORY:COUNT",
        ),
        ("{gpu: 2}", "backends.0.resources.gpu: unknown key; allowed: cpus, memory, disk, arch, gpus"),
        ("{memory: lots}", "backends.0.resources.memory: 'lots' is not a size; use e.g. 80GB, 512MB or 1TB"),
        ("{cpus: 0}", "backends.0.resources.cpus: Input should be greater than or equal to 1"),
    ],
)
def test_mistakes_are_one_sentence_naming_the_key(tmp_path: Path, resources: str, message: str) -> None:
    assert error(tmp_path, f"backends:\n  - type: local\n    resources: {resources}\n").startswith(message)


def test_a_backend_is_listed_once(tmp_path: Path) -> None:
    assert error(tmp_path, "backends: [{type: local}, {type: local}]\n") == (
        "backend local is listed 2 times; list it once"
    )
