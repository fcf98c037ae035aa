"""The rolling horizon and retention: what a calendar keeps as days pass.

A calendar holds the local days from ``keep_days`` before today to ``horizon_days``
ahead (its template opens the new days as they come into the horizon; an imported
calendar gets its new days from the next import). Slots of days that fell out leave
memory: their bookings go to the archive, read by id. Idempotency records and the ids
of expired holds are kept ``retention_seconds`` (48 h) and then forgotten: a command
repeated after that is a new command (the gateway's own claim on a key lasts 24 h, so a
key reused after it cannot book twice), and confirming a hold that expired more than
48 h ago is ``hold_not_found`` instead of ``hold_expired``.

:func:`plan_roll` decides, from a calendar and the time, the :class:`RollCalendar`
command that brings it up to date (``None`` when it is). Pure: time is passed in.

>>> from datetime import date
>>> from engine.calendar import Calendar
>>> from engine.schedule import WeeklyTemplate, WEEKDAYS, local_midnight
>>> t = WeeklyTemplate.uniform(WEEKDAYS, "09:00", "17:00", 2)
>>> cal = Calendar.from_template("p", "s", "America/Phoenix", t, date(2026, 3, 2), 14,
...                              horizon_days=28)
>>> roll = plan_roll(cal, local_midnight("America/Phoenix", date(2026, 3, 10)) + 3600)
>>> (roll.start - cal.start) // 86_400, (roll.end - cal.start) // 86_400
(7, 36)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from engine.calendar import Calendar
from engine.records import RollCalendar
from engine.schedule import local_midnight, template_capacity, zone

__all__ = ["KEEP_DAYS", "RETENTION_SECONDS", "next_roll_at", "plan_roll"]

KEEP_DAYS = 1  # yesterday stays: a patient late for a slot can still be looked up
RETENTION_SECONDS = 48 * 3600


def plan_roll(
    cal: Calendar,
    now: int,
    *,
    keep_days: int = KEEP_DAYS,
    retention_seconds: int = RETENTION_SECONDS,
) -> RollCalendar | None:
    """The roll that brings ``cal`` up to date at ``now``, or ``None``."""
    schedule = cal.schedule
    tz_name = schedule.timezone if schedule is not None else "UTC"
    today = datetime.fromtimestamp(now, UTC).astimezone(zone(tz_name)).date()
    step = cal.slot_seconds
    keep_from = local_midnight(tz_name, today - timedelta(days=keep_days))
    start = max(cal.start, cal.start + (keep_from - cal.start) // step * step)
    end = cal.end
    capacity = b""
    if schedule is not None and schedule.template is not None and schedule.horizon_days > 0:
        until = local_midnight(tz_name, today + timedelta(days=schedule.horizon_days))
        end = max(cal.end, cal.start - (cal.start - until) // step * step)  # ceil to the grid
        starts = np.arange(cal.end, end, step, dtype=np.int64)
        capacity = template_capacity(tz_name, schedule.template, starts, step).tobytes()
    if start == cal.start and end == cal.end:
        return None
    return RollCalendar(
        cal.provider_id,
        cal.service,
        now,
        min(start, end),
        end,
        capacity,
        now - retention_seconds,
    )


def next_roll_at(cal: Calendar, now: int) -> int:
    """When ``cal`` next needs :func:`plan_roll`: its zone's next midnight after ``now``
    (days move on only then)."""
    tz_name = cal.schedule.timezone if cal.schedule is not None else "UTC"
    today = datetime.fromtimestamp(now, UTC).astimezone(zone(tz_name)).date()
    return local_midnight(tz_name, today + timedelta(days=1))
