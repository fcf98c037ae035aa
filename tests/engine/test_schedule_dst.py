"""Schedules in local time across daylight-saving changes (America/Chicago, 2026:
spring forward on Sunday 8 March at 02:00, fall back on Sunday 1 November at 02:00)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from engine.errors import InvalidRequest
from engine.schedule import WEEKDAYS, Blocked, WeeklyTemplate, Window, build_grid, utc_offsets

CHICAGO = "America/Chicago"
TZ = ZoneInfo(CHICAGO)
ALL_DAY = WeeklyTemplate(days=tuple((d, (Window("00:00", "24:00", 1),)) for d in WEEKDAYS))


def local(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, TZ)


def open_starts(grid_start: int, slot: int, capacity: np.ndarray) -> list[datetime]:
    return [local(grid_start + int(i) * slot) for i in np.flatnonzero(capacity)]


@pytest.mark.parametrize(
    ("day", "hours"), [(date(2026, 3, 7), 24), (date(2026, 3, 8), 23), (date(2026, 11, 1), 25)]
)
def test_a_day_has_as_many_slots_as_hours(day: date, hours: int) -> None:
    grid = build_grid(CHICAGO, ALL_DAY, day, days=1, slot_minutes=15)
    assert grid.capacity.size == hours * 4
    assert int(grid.capacity.sum()) == hours * 4


def test_opening_time_stays_local_across_spring_forward() -> None:
    t = WeeklyTemplate(days=tuple((d, (Window("09:00", "17:00", 2),)) for d in WEEKDAYS))
    grid = build_grid(CHICAGO, t, date(2026, 3, 7), days=2, slot_minutes=15)
    starts = open_starts(grid.start, grid.slot_seconds, grid.capacity)
    saturday = [s for s in starts if s.day == 7]
    sunday = [s for s in starts if s.day == 8]
    assert (saturday[0].hour, saturday[0].minute) == (9, 0)
    assert (sunday[0].hour, sunday[0].minute) == (9, 0)
    assert (saturday[-1].hour, saturday[-1].minute) == (16, 45)
    assert len(saturday) == len(sunday) == 32
    # 09:00 local is 15:00 UTC in winter and 14:00 UTC in summer time.
    assert saturday[0].astimezone(UTC).hour == 15
    assert sunday[0].astimezone(UTC).hour == 14


def test_window_over_the_missing_hour_loses_it() -> None:
    t = WeeklyTemplate(days=(("sun", (Window("01:00", "04:00", 1),)),))
    grid = build_grid(CHICAGO, t, date(2026, 3, 8), days=1, slot_minutes=15)
    starts = open_starts(grid.start, grid.slot_seconds, grid.capacity)
    assert [s.strftime("%H:%M") for s in starts] == [
        "01:00", "01:15", "01:30", "01:45", "03:00", "03:15", "03:30", "03:45",
    ]  # fmt: skip


def test_window_over_the_repeated_hour_gets_it_twice() -> None:
    t = WeeklyTemplate(days=(("sun", (Window("01:00", "03:00", 1),)),))
    grid = build_grid(CHICAGO, t, date(2026, 11, 1), days=1, slot_minutes=30)
    starts = open_starts(grid.start, grid.slot_seconds, grid.capacity)
    labels = [s.strftime("%H:%M %Z") for s in starts]
    assert labels == [
        "01:00 CDT", "01:30 CDT", "01:00 CST", "01:30 CST", "02:00 CST", "02:30 CST",
    ]  # fmt: skip
    # Six distinct UTC instants, half an hour apart: nothing booked twice by accident.
    utc = [int(s.timestamp()) for s in starts]
    assert np.diff(utc).tolist() == [1800] * 5


def test_fall_back_horizon_spans_local_midnights() -> None:
    grid = build_grid(CHICAGO, ALL_DAY, date(2026, 10, 31), days=3, slot_minutes=60)
    assert local(grid.start).strftime("%Y-%m-%d %H:%M") == "2026-10-31 00:00"
    end = grid.start + grid.capacity.size * grid.slot_seconds
    assert local(end).strftime("%Y-%m-%d %H:%M") == "2026-11-03 00:00"
    assert grid.capacity.size == 24 + 25 + 24


def test_offsets_change_at_the_exact_second() -> None:
    change = int(datetime(2026, 3, 8, 8, 0, tzinfo=UTC).timestamp())  # 02:00 CST
    got = utc_offsets(CHICAGO, np.array([change - 1, change, change + 1]))
    assert got.tolist() == [-6 * 3600, -5 * 3600, -5 * 3600]


def test_closed_dates_and_blocked_local_periods() -> None:
    t = WeeklyTemplate(
        days=tuple((d, (Window("09:00", "12:00", 3),)) for d in WEEKDAYS),
        closed_dates=("2026-03-09",),
        blocked=(Blocked("2026-03-08T10:00", "2026-03-08T11:00"),),
    )
    grid = build_grid(CHICAGO, t, date(2026, 3, 8), days=2, slot_minutes=15)
    starts = open_starts(grid.start, grid.slot_seconds, grid.capacity)
    assert {s.day for s in starts} == {8}  # the 9th is closed
    assert [s.strftime("%H:%M") for s in starts] == [
        "09:00", "09:15", "09:30", "09:45", "11:00", "11:15", "11:30", "11:45",
    ]  # fmt: skip
    assert set(grid.capacity[grid.capacity > 0].tolist()) == {3}


def test_slots_must_fit_the_window() -> None:
    t = WeeklyTemplate(days=(("mon", (Window("09:00", "10:10", 1),)),))
    grid = build_grid(CHICAGO, t, date(2026, 3, 2), days=1, slot_minutes=30)
    assert [s.strftime("%H:%M") for s in open_starts(grid.start, 1800, grid.capacity)] == [
        "09:00",
        "09:30",
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Window("17:00", "09:00", 1), "closes before it opens"),
        (lambda: Window("9am", "10:00", 1), "not HH:MM"),
        (lambda: Window("09:00", "10:00", 70_000), "capacity"),
        (lambda: WeeklyTemplate(days=(("monday", ()),)), "weekday"),
        (lambda: WeeklyTemplate(days=(), closed_dates=("03/08/2026",)), "YYYY-MM-DD"),
        (lambda: build_grid("Mars/Olympus", ALL_DAY, date(2026, 1, 1), 1, 15), "IANA"),
        (lambda: build_grid(CHICAGO, ALL_DAY, date(2026, 1, 1), 1, 7), "slot length"),
        (lambda: build_grid(CHICAGO, ALL_DAY, date(2026, 1, 1), 0, 15), "horizon"),
    ],
)
def test_bad_schedules_say_what_is_wrong(make: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        make()  # type: ignore[operator]


def test_grids_of_one_template_do_not_share_memory() -> None:
    a = build_grid(CHICAGO, ALL_DAY, date(2026, 1, 5), 1, 15)
    b = build_grid(CHICAGO, ALL_DAY, date(2026, 1, 5), 1, 15)
    a.capacity[0] = 9
    assert b.capacity[0] == 1
