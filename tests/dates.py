"""Dates for tests: always in the future (holds on started slots are refused, and a
shard rolls the past out of its calendars)."""

from __future__ import annotations

from datetime import date, timedelta


def dst_saturday(today: date | None = None) -> date:
    """The Saturday before the next US switch to daylight time (second Sunday of March)."""
    today = today or date.today()
    for year in (today.year, today.year + 1):
        march1 = date(year, 3, 1)
        second_sunday = march1 + timedelta(days=(6 - march1.weekday()) % 7 + 7)
        saturday = second_sunday - timedelta(days=1)
        if saturday > today:
            return saturday
    raise AssertionError("unreachable")


def ahead(days: int = 7, today: date | None = None) -> date:
    """A day ``days`` from now: calendars of tests that must not roll while they run
    (a calendar whose days are past is rolled down to nothing by its shard)."""
    return (today or date.today()) + timedelta(days=days)
