"""Dates for gateway tests: always in the future (holds on started slots are refused)."""

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
