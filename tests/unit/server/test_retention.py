"""Which finished runs a retention pass deletes (issue 13, item 22)."""

from __future__ import annotations

from dstack.server.config_file import ServerConfig
from dstack.server.services.retention import KEEP_RECENT, Candidate, Readers, choose

NOW = 1_000_000.0
DAY = 86400.0
GB = 1024**3


def _policy(**retention: object) -> object:
    return ServerConfig.model_validate({"retention": retention}).retention


def test_defaults_are_documented_values() -> None:
    policy = ServerConfig.model_validate({}).retention
    assert (policy.max_age, policy.max_size, policy.run_output_limit) == (30 * DAY, 20 * GB, 4 * GB)


def test_old_runs_go_by_age_and_the_oldest_go_by_size() -> None:
    runs = [
        Candidate("ancient", NOW - 40 * DAY, 1 * GB, read=False),
        Candidate("old", NOW - 5 * DAY, 3 * GB, read=False),
        Candidate("older", NOW - 6 * DAY, 3 * GB, read=False),
        Candidate("recent", NOW - 1 * DAY, 3 * GB, read=False),
        Candidate("just-ended", NOW - 10, 3 * GB, read=False),
    ]
    policy = _policy(max_age="30d", max_size="7GB")
    # By age: ancient. Then 12 GB left, over 7 GB: older, then old go (oldest first) -> 6 GB.
    assert choose(runs, policy, NOW) == ["ancient", "older", "old"]  # type: ignore[arg-type]


def test_read_runs_and_just_ended_ones_stay() -> None:
    runs = [
        Candidate("read", NOW - 40 * DAY, 5 * GB, read=True),
        Candidate("just-ended", NOW - KEEP_RECENT / 2, 50 * GB, read=False),
    ]
    assert choose(runs, _policy(max_age="30d", max_size="1GB"), NOW) == []  # type: ignore[arg-type]


def test_off_keeps_everything() -> None:
    runs = [Candidate("ancient", NOW - 400 * DAY, 500 * GB, read=False)]
    assert choose(runs, _policy(max_age="off", max_size="off"), NOW) == []  # type: ignore[arg-type]


def test_readers_count_nested_reads() -> None:
    readers = Readers()
    with readers.reading("r"):
        with readers.reading("r"):
            assert "r" in readers
        assert "r" in readers
    assert "r" not in readers
