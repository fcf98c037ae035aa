"""The rolling horizon (engine/horizon.py): a calendar rolled day after day is the
calendar its template would give for those days, across DST; past days leave with their
bookings; old idempotency records and expired holds are forgotten."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import codec
from engine.calendar import Calendar
from engine.errors import IdempotencyConflict, InvalidRequest
from engine.horizon import RETENTION_SECONDS, plan_roll
from engine.records import (
    CalendarRolled,
    ConfirmHold,
    HoldReleased,
    PlaceHold,
    RollCalendar,
)
from engine.schedule import WeeklyTemplate, Window, local_midnight

ZONES = ["America/Chicago", "America/New_York", "Europe/Berlin", "Australia/Sydney", "UTC",
         "America/Phoenix", "Asia/Kolkata"]  # fmt: skip
TEMPLATE = WeeklyTemplate(
    days=(
        ("mon", (Window("09:00", "12:00", 2), Window("13:00", "17:00", 1))),
        ("wed", (Window("00:00", "24:00", 3),)),
        ("sat", (Window("08:00", "10:00", 4),)),
        ("sun", (Window("01:00", "04:00", 1),)),  # spans the DST change hours
    ),
    closed_dates=("2026-03-11", "2026-11-04"),
)


def roll_to(cal: Calendar, now: int) -> Calendar:
    cmd = plan_roll(cal, now)
    if cmd is not None:
        cal.handle(cmd)
        cal.drain()
    return cal


@settings(max_examples=60, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    first=st.dates(date(2026, 1, 1), date(2026, 12, 1)),
    days_run=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    horizon=st.integers(1, 40),
    slot_minutes=st.sampled_from([5, 15, 30, 60]),
)
def test_a_calendar_rolled_day_by_day_is_what_its_template_gives_for_those_days(
    tz: str, first: date, days_run: list[int], horizon: int, slot_minutes: int
) -> None:
    cal = Calendar.from_template("p", "s", tz, TEMPLATE, first, 3, slot_minutes, horizon)
    today = first
    for step in days_run:
        today += timedelta(days=step)
        roll_to(cal, local_midnight(tz, today) + 3 * 3600)  # 03:00 local
        fresh = Calendar.from_template(
            "p", "s", tz, TEMPLATE, today - timedelta(days=1), horizon + 1, slot_minutes
        )
        # The window starts at yesterday's midnight and runs to the horizon's, exactly.
        assert cal.start == fresh.start, (today, tz)
        assert cal.end >= fresh.end
        assert cal.capacity[: fresh.n_slots].tolist() == fresh.capacity.tolist(), today
    assert plan_roll(cal, local_midnight(tz, today) + 4 * 3600) is None  # up to date


def test_past_days_leave_with_their_bookings_and_the_roll_replays() -> None:
    tz = "America/Chicago"
    day = date(2026, 3, 7)  # the Saturday before DST
    t = WeeklyTemplate.uniform(("sat", "sun", "mon", "tue"), "09:00", "10:00", 2)
    cal = Calendar.from_template("p", "s", tz, t, day, 4, 15, horizon_days=5)
    snapshot = codec.encode(cal.snapshot())
    start = int(cal.starts()[cal.capacity > 0][0])  # Saturday 09:00
    now = start - 3600
    cal.handle(PlaceHold("p", "s", "k-h", now, "h1", start, 1, 300))
    booking = cal.handle(ConfirmHold("p", "s", "k-b", now + 1, "h1", "b1", b"d", "ref"))
    later = int(cal.starts()[cal.capacity > 0][-1])  # Tuesday 09:45
    cal.handle(PlaceHold("p", "s", None, later - 7200, "h2", later, 1, 10**6))  # long hold
    journal = cal.drain()
    # Tuesday night: Saturday and Sunday leave (yesterday, Monday, stays).
    tuesday = local_midnight(tz, day + timedelta(days=3)) + 20 * 3600
    roll = plan_roll(cal, tuesday)
    assert roll is not None
    cal.handle(roll)
    events = cal.drain()
    rolled = next(e for e in events if isinstance(e, CalendarRolled))
    assert [b.booking_id for b in rolled.archived] == ["b1"] and booking is not None
    assert "b1" not in cal.bookings and "h2" in cal.holds
    assert cal.start == local_midnight(tz, day + timedelta(days=2))  # Monday
    # The new days are there, through the horizon: Tuesday + 5 days.
    assert cal.end == local_midnight(tz, day + timedelta(days=8))
    # Snapshot + journal rebuild the same calendar (the capacity is in the event).
    rebuilt = Calendar.from_snapshot(codec.decode_snapshot(snapshot))
    rebuilt.replay(codec.decode_events(codec.encode(journal + events)))
    assert codec.encode(rebuilt.snapshot()) == codec.encode(cal.snapshot())


def test_old_memories_are_forgotten_after_the_retention_window() -> None:
    tz = "UTC"
    cal = Calendar.from_template(
        "p", "s", tz, WeeklyTemplate.uniform(("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
                                             "00:00", "24:00", 5), date(2026, 6, 1), 10, 60, 10
    )  # fmt: skip
    t0 = local_midnight(tz, date(2026, 6, 1))
    slot = t0 + 5 * 86400
    cal.handle(PlaceHold("p", "s", "key-1", t0, "h1", slot, 1, 60))
    cal.handle(PlaceHold("p", "s", None, t0, "h2", slot, 1, 60))
    cal.expire(t0 + 120)  # h2 ran out
    cal.drain()
    # A day later the key is still remembered: the same key for another slot conflicts.
    cal.handle(plan_roll(cal, t0 + 86400 + 60))  # type: ignore[arg-type]
    try:
        cal.handle(PlaceHold("p", "s", "key-1", t0 + 86400, "h3", slot + 3600, 1, 60))
        raise AssertionError("a key within the retention window was forgotten")
    except IdempotencyConflict:
        pass
    assert cal.expired_at("h2") is not None
    # Past the window (48 h), both are forgotten.
    cal.handle(plan_roll(cal, t0 + 3 * 86400 + 60))  # type: ignore[arg-type]
    assert cal.expired_at("h2") is None
    again = cal.handle(PlaceHold("p", "s", "key-1", t0 + 3 * 86400, "h4", slot + 3600, 1, 60))
    assert again is not None and again.hold_id == "h4"
    assert RETENTION_SECONDS == 48 * 3600


def test_a_calendar_without_a_template_only_loses_its_past() -> None:
    step = 900
    start = local_midnight("UTC", date(2026, 5, 1))
    cal = Calendar("p", "s", start, step, np.full(96 * 5, 2, dtype=np.uint16))
    roll = plan_roll(cal, start + 3 * 86400 + 10)
    assert roll is not None and roll.capacity == b"" and roll.end == cal.end
    cal.handle(roll)
    assert cal.start == start + 2 * 86400 and cal.n_slots == 96 * 3


def test_a_calendar_offline_for_weeks_rolls_in_one_step() -> None:
    tz = "Europe/Berlin"
    cal = Calendar.from_template("p", "s", tz, TEMPLATE, date(2026, 2, 2), 7, 30, 14)
    today = date(2026, 4, 20)
    roll_to(cal, local_midnight(tz, today) + 600)
    fresh = Calendar.from_template("p", "s", tz, TEMPLATE, today - timedelta(days=1), 15, 30)
    assert (cal.start, cal.end) == (fresh.start, fresh.end)
    assert cal.capacity.tolist() == fresh.capacity.tolist()


def test_a_roll_off_the_grid_or_backwards_is_refused() -> None:
    cal = Calendar("p", "s", 0, 900, np.ones(8, dtype=np.uint16))
    for start, end, capacity in ((450, 7200, b""), (-900, 7200, b""), (0, 6300, b""),
                                 (0, 8100, b"")):  # fmt: skip
        try:
            cal.handle(RollCalendar("p", "s", 1, start, end, capacity, 0))
            raise AssertionError((start, end))
        except InvalidRequest:
            pass
    assert (cal.start, cal.n_slots) == (0, 8)


def test_a_hold_on_a_slot_that_leaves_expires() -> None:
    cal = Calendar("p", "s", 0, 900, np.ones(8, dtype=np.uint16))
    cal.handle(PlaceHold("p", "s", None, 0, "h", 0, 1, 10**6))
    cal.handle(RollCalendar("p", "s", 100, 1800, 7200, b"", 0))
    events = cal.drain()
    assert isinstance(events[1], HoldReleased) and events[1].reason == "expired"
    assert cal.expired_at("h") == 100 and not cal.holds
