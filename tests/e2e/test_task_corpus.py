"""A corpus of task files written for today's dstack (tests/e2e/corpus, every field at least once): each
reaches the plan through the real `dstack run` (the test answers `n`), with the lines and outcome its header
comments name. See corpus/README.md for the format."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.config import TaskConfiguration
from dstack.config.loader import load_configuration
from dstack.config.yaml_source import read_yaml
from tests.dockerd import Dockerd, debian_image, dockerd  # noqa: F401
from tests.e2e.harness import DstackEnv

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*.dstack.yml"))


@pytest.fixture(scope="module")
def corpus_env(
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: Dockerd,  # noqa: F811
    debian_image: str,  # noqa: F811
) -> Iterator[tuple[DstackEnv, Path]]:
    """One server for the whole corpus (each file only asks for a plan), with Docker for image tasks."""
    env = DstackEnv(tmp_path_factory.mktemp("corpus") / "home")
    env.env.update(dockerd.env)
    env.env.update({"HF_TOKEN": "hf-test", "REGISTRY_USER": "alice"})
    project = env.home / "project"
    shutil.copytree(CORPUS, project)
    try:
        env.run("secret", "set", "CORPUS_PASSWORD", "not-used", check=True)
        yield env, project
    finally:
        env.cleanup()


def header(path: Path, key: str) -> list[str]:
    prefix = f"# {key}: "
    return [line[len(prefix) :].strip() for line in path.read_text().splitlines() if line.startswith(prefix)]


def test_the_corpus_covers_every_field() -> None:
    used: set[str] = set()
    for path in FILES:
        load_configuration(path)  # valid, every one
        used |= set(read_yaml(path.read_text(), filename=path.name).data)
    assert set(TaskConfiguration.allowed_keys()) - used == set()
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_each_file_reaches_the_plan(corpus_env: tuple[DstackEnv, Path], path: Path) -> None:
    env, project = corpus_env
    result = env.run("run", ".", "-f", path.name, cwd=project, input="n\n", timeout=120)
    assert "Configuration  " + path.name in result.stderr, result.stderr  # the plan was shown
    (expected,) = header(path, "expect")
    if expected == "nvcc":  # whether this machine has the CUDA compiler decides
        has_nvcc = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
        expected = "ok" if has_nvcc else "No offer has the CUDA compiler (nvcc: true needs nvcc on the host)"
    if expected == "ok":
        assert result.returncode == 0, result.stderr
        assert "Continue? [y/n]: Exiting..." in result.stderr
    else:
        assert result.returncode == 1, result.stderr
        assert expected in result.stderr.splitlines()[-1], result.stderr
    for line in header(path, "note"):
        assert any(shown.startswith(line) for shown in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr


def test_dstack_schema_describes_the_corpus(corpus_env: tuple[DstackEnv, Path]) -> None:
    env, _ = corpus_env
    schema = json.loads(env.run("schema", check=True).stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # One schema for every file `dstack run`/`apply` reads: a task or a fleet, told apart by `type`.
    kinds = {branch["properties"]["type"]["const"]: branch for branch in schema["oneOf"]}
    assert set(kinds) == {"task", "fleet"}
    assert set(kinds["task"]["properties"]) == set(TaskConfiguration.allowed_keys())
