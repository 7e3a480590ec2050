"""docs/ matches the code: the generated field and flag tables are up to date, every field of the
configuration models and every flag of the CLI has a description, and the README points into docs/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "dev" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_docs_are_up_to_date_and_complete() -> None:
    problems = _generator().check()
    assert problems == [], "\n".join([*problems, "regenerate with: .venv/bin/python dev/gen_docs.py"])


def test_every_command_and_every_model_field_is_in_the_docs() -> None:
    from dstack.cli.main import COMMANDS
    from dstack.config import kinds
    from dstack.server.config_file import ServerConfig

    cli = (ROOT / "docs" / "cli.md").read_text()
    for name in COMMANDS:
        assert f"### dstack {name}\n" in cli, name
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    for kind in kinds.registered():  # every `type:`, with every field of its model
        assert f"<!-- BEGIN GENERATED: {kind} " in configuration, kind
        for field in kinds.model_for(kind).model_fields:
            assert f"| `{field}` |" in configuration, (kind, field)
    server = (ROOT / "docs" / "server.md").read_text()
    for field in ServerConfig.model_fields:
        assert f"| `{field}` |" in server, field


def test_the_readme_sends_readers_to_docs_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "shared/SPEC.md" not in readme
    assert "docs/" in readme
    for link in ("docs/configuration.md", "docs/cli.md", "docs/server.md", "docs/backends.md"):
        assert (ROOT / link).is_file(), link
