"""A run's stored spec is parsed and checked once per server process, and never stale."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dstack.config import parse_configuration, parse_overrides, resolve_profile
from dstack.server.schemas import RunSpec
from dstack.server.services import specs
from dstack.server.services.errors import ServiceError


def _text(command: str = "echo hi", name: str = "r") -> str:
    parsed = parse_configuration(f"type: task\ncommands: [{command!r}]\n", filename="t.dstack.yml")
    profile = resolve_profile(parsed, None, parse_overrides())
    spec = RunSpec(
        run_name=name,
        configuration=parsed.model_dump(mode="json"),
        profile=profile.model_dump(mode="json"),
        commands=[command],
    )
    return spec.model_dump_json()


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    specs._RECENT.clear()
    yield
    specs._RECENT.clear()


def test_a_spec_is_parsed_and_checked_once() -> None:
    text = _text()
    checked = specs.checked_of("run-1", text)
    assert checked.spec.commands == ["echo hi"]
    assert specs.checked_of("run-1", text) is checked
    assert specs.spec_of("run-1", text) is checked.spec
    assert specs.recall("run-1") is checked


def test_another_text_for_the_same_run_is_parsed_again() -> None:
    first = specs.checked_of("run-1", _text("echo one"))
    second = specs.checked_of("run-1", _text("echo two"))
    assert second is not first
    assert second.spec.commands == ["echo two"]


def test_what_submission_checked_is_what_the_supervisor_reads() -> None:
    text = _text(name="claimed")
    checked = specs.check(RunSpec.model_validate_json(text))
    specs.remember("run-1", text, checked)
    assert specs.checked_of("run-1", text) is checked
    specs.forget("run-1")
    assert specs.recall("run-1") is None
    again = specs.checked_of("run-1", text)  # parsed anew, the same spec
    assert again is not checked and again.spec == checked.spec


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(specs, "_RECENT_MAX", 3)
    text = _text()
    for i in range(5):
        specs.spec_of(f"run-{i}", text)
    assert list(specs._RECENT) == ["run-2", "run-3", "run-4"]
    specs.spec_of("run-2", text)  # used: the newest now
    specs.spec_of("run-5", text)
    assert list(specs._RECENT) == ["run-4", "run-2", "run-5"]


def test_a_spec_that_fails_its_check_is_not_kept_as_checked() -> None:
    text = _text()
    broken = text.replace('"commands":["echo hi"]', '"commands":["echo hi"],"image":"x","python":"3.11"', 1)
    assert broken != text
    with pytest.raises(ServiceError):
        specs.checked_of("run-1", broken)
    assert specs.recall("run-1") is None
