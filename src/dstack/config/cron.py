"""Cron expressions of `schedule: {cron: ...}`, in UTC, with dstack's meaning.

Five fields: minute (0-59), hour (0-23), day of the month (1-31), month (1-12 or jan-dec) and day of the
week (0-6 or mon-sun). As in dstack, the week starts on Monday: 0 is Monday and 6 is Sunday. Each field is
`*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of those. As in POSIX cron,
when both the day of the month and the day of the week are restricted, a day matching either one fires.

Standard library only, and no pydantic: the server's scheduling loop uses it too.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from dstack.config.errors import InvalidValue

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HINT = "use five fields: minute hour day-of-month month day-of-week, e.g. '15 23 * * *'"
# No schedule that matches some day can be more than this far from its next start (29 Feb, every 4 years;
# 8 years covers a century year that is not a leap year).
_SEARCH_DAYS = 366 * 8 + 2


class _Field(NamedTuple):
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    first_name_value: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of the month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day of the week", 0, 6, _DAYS, 0),
)


class Cron(NamedTuple):
    """A parsed expression: the allowed values of each field (weekday 0 = Monday, as Python's)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = day.weekday() in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_day or by_weekday
        return by_day and by_weekday

    def next_after(self, moment: dt.datetime) -> dt.datetime | None:
        """The first start strictly after `moment` (an aware datetime); None if it never fires."""
        moment = moment.astimezone(dt.timezone.utc)
        start = (moment + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        day = start.date()
        for offset in range(_SEARCH_DAYS):
            if offset:
                day = start.date() + dt.timedelta(days=offset)
            if not self.matches_day(day):
                continue
            first_hour = start.hour if offset == 0 else 0
            for hour in sorted(h for h in self.hours if h >= first_hour):
                first_minute = start.minute if offset == 0 and hour == start.hour else 0
                minutes = [m for m in sorted(self.minutes) if m >= first_minute]
                if minutes:
                    return dt.datetime(day.year, day.month, day.day, hour, minutes[0], tzinfo=dt.timezone.utc)
        return None


def parse_cron(text: str) -> Cron:
    """Parse one expression; raises InvalidValue with a reason that names the bad field."""
    if not isinstance(text, str):
        raise InvalidValue("cron expression", text, _HINT)
    fields = text.split()
    if len(fields) != 5:
        raise InvalidValue("cron expression", text, f"it has {len(fields)} fields; {_HINT}")
    values = [_parse_field(part, spec, text) for part, spec in zip(fields, _FIELDS, strict=True)]
    cron = Cron(
        text=" ".join(fields),
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=values[4],
        days_restricted=not fields[2].startswith("*"),
        weekdays_restricted=not fields[4].startswith("*"),
    )
    if cron.next_after(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)) is None:
        raise InvalidValue("cron expression", text, "no date ever matches it")
    return cron


def next_start(expressions: list[str], after: float) -> float | None:
    """The earliest start of any expression after the unix time `after` (seconds); None if none fires."""
    moment = dt.datetime.fromtimestamp(after, tz=dt.timezone.utc)
    starts = [c.next_after(moment) for c in (parse_cron(e) for e in expressions)]
    found = [s for s in starts if s is not None]
    return min(found).timestamp() if found else None


def format_utc(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _parse_field(part: str, spec: _Field, text: str) -> frozenset[int]:
    found: set[int] = set()
    for item in part.split(","):
        if not item:
            raise InvalidValue("cron expression", text, f"the {spec.name} field has an empty list item")
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or len(step_text) > 4 or int(step_text) == 0:
                raise InvalidValue(
                    "cron expression",
                    text,
                    f"the step '{step_text}' of the {spec.name} field is not a number from 1 to 9999",
                )
            step = int(step_text)
        if body == "*":
            low, high = spec.low, spec.high
        elif "-" in body:
            left, _, right = body.partition("-")
            low, high = _value(left, spec, text), _value(right, spec, text)
            if low > high:
                raise InvalidValue(
                    "cron expression", text, f"the range {body} of the {spec.name} field goes backwards"
                )
        else:
            low = _value(body, spec, text)
            high = spec.high if slash else low
        found.update(range(low, high + 1, step))
    return frozenset(found)


def _value(token: str, spec: _Field, text: str) -> int:
    lowered = token.lower()
    if spec.names and lowered in spec.names:
        return spec.names.index(lowered) + spec.first_name_value
    if not token.isdigit() or not token.isascii():
        allowed = f"{spec.low}-{spec.high}" + (f" or {spec.names[0]}-{spec.names[-1]}" if spec.names else "")
        raise InvalidValue("cron expression", text, f"'{token}' is not a {spec.name} ({allowed})")
    value = int(token) if len(token) <= 4 else spec.high + 1  # a huge number is simply out of range
    if not spec.low <= value <= spec.high:
        raise InvalidValue(
            "cron expression", text, f"{spec.name} {token} is out of range {spec.low}-{spec.high}"
        )
    return value
