"""Cron schedules with dstack's meaning: UTC, five fields, the week starting on Monday (0)."""

from __future__ import annotations

import datetime as dt

import pytest

from dstack.config.cron import format_utc, next_start, parse_cron

UTC = dt.timezone.utc


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("15 23 * * *", "2026-12-01 10:00", "2026-12-01 23:15"),
        ("15 23 * * *", "2026-12-01 23:15", "2026-12-02 23:15"),  # strictly after
        ("* * * * *", "2026-12-01 10:00:30", "2026-12-01 10:01"),
        ("*/10 8-10 * * *", "2026-12-01 10:51", "2026-12-02 08:00"),
        ("15,45 10 * * *", "2026-12-01 10:20", "2026-12-01 10:45"),
        ("0 1-3 * * *", "2026-12-01 02:30", "2026-12-01 03:00"),
        # 0 is Monday, as in dstack; 2026-12-01 is a Tuesday.
        ("0 9 * * 0", "2026-12-01 00:00", "2026-12-07 09:00"),
        ("0 9 * * mon", "2026-12-01 00:00", "2026-12-07 09:00"),
        ("0 9 * * sun", "2026-12-01 00:00", "2026-12-06 09:00"),
        ("0 9 * * 6", "2026-12-01 00:00", "2026-12-06 09:00"),
        ("0 9 * * MON-FRI", "2026-12-05 00:00", "2026-12-07 09:00"),
        ("0 0 1 jan *", "2026-12-01 00:00", "2027-01-01 00:00"),
        ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),
        # Both days restricted: either one fires (POSIX).
        ("0 0 13 * 4", "2026-12-01 00:00", "2026-12-04 00:00"),
        ("30 6 */2 * *", "2026-12-02 07:00", "2026-12-03 06:30"),
    ],
)
def test_next_start(expression: str, after: str, expected: str) -> None:
    assert parse_cron(expression).next_after(at(after)) == at(expected)


def test_the_earliest_of_several_expressions() -> None:
    after = at("2026-12-01 10:00").timestamp()
    assert next_start(["0 12 * * *", "30 10 * * *"], after) == at("2026-12-01 10:30").timestamp()
    assert format_utc(at("2026-12-01 10:30").timestamp()) == "2026-12-01 10:30 UTC"
