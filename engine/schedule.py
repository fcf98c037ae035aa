"""Weekly schedule templates in a provider's local time, turned into UTC slot grids.

A template says, per weekday, the opening windows (local wall-clock ``"HH:MM"``) and
the capacity of each slot in them, plus exceptions: closed local dates and blocked
local periods. :func:`build_grid` lays a horizon of whole local days out as UTC
slots and fills their capacity.

Daylight saving is handled by working from UTC: every UTC slot start is converted to
local time (with the exact offset in force at that instant), and the slot is open when
its local time falls in a window. So a spring-forward day has one hour fewer, a
fall-back day one hour more, and a 09:00 opening is 09:00 local on both sides of a
transition.

>>> from datetime import date
>>> t = WeeklyTemplate.uniform(("mon", "tue", "wed", "thu", "fri"), "09:00", "17:00", 2)
>>> grid = build_grid("America/Chicago", t, date(2026, 3, 2), days=7, slot_minutes=15)
>>> int(grid.capacity.sum())  # 5 days x 32 slots x 2 places
320
"""

from __future__ import annotations

import re
from bisect import bisect_right
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import msgspec
import numpy as np

from engine.errors import InvalidRequest

__all__ = [
    "FIRST_DAY_MAX",
    "FIRST_DAY_MIN",
    "WEEKDAYS",
    "Blocked",
    "Grid",
    "WeeklyTemplate",
    "Window",
    "build_grid",
    "local_midnight",
    "template_capacity",
    "zone",
    "zone_names",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CAPACITY_MAX = 65_535  # slots are stored as uint16
# Calendars start within these days (a grid's UTC seconds and its end stay representable).
FIRST_DAY_MIN = date(1970, 1, 2)
FIRST_DAY_MAX = date(2199, 12, 31)
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_LOCAL = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?(Z|[+-][0-9]{2}:[0-9]{2})?"
)


def _minutes(hhmm: str) -> int:
    if not _HHMM.fullmatch(hhmm):
        raise InvalidRequest(f"time {hhmm!r} is not HH:MM (00:00 to 24:00)")
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class Window(msgspec.Struct, frozen=True):
    """Open from ``opens`` to ``closes`` (local ``HH:MM``), ``capacity`` places a slot."""

    opens: str
    closes: str
    capacity: int

    def __post_init__(self) -> None:
        if _minutes(self.closes) <= _minutes(self.opens):
            raise InvalidRequest(
                f"window {self.opens}-{self.closes} closes before it opens; "
                "split a window that crosses midnight into two"
            )
        if not 0 <= self.capacity <= CAPACITY_MAX:
            raise InvalidRequest(f"capacity {self.capacity} must be 0 to {CAPACITY_MAX}")


class Blocked(msgspec.Struct, frozen=True):
    """A local period with no appointments, e.g. ``"2026-03-10T12:00"`` to ``"...T13:00"``."""

    start: str
    end: str


class WeeklyTemplate(msgspec.Struct, frozen=True):
    """Opening windows per weekday (keys ``mon`` to ``sun``) with exceptions."""

    days: tuple[tuple[str, tuple[Window, ...]], ...]
    closed_dates: tuple[str, ...] = ()
    blocked: tuple[Blocked, ...] = ()

    def __post_init__(self) -> None:
        for day, _ in self.days:
            if day not in WEEKDAYS:
                raise InvalidRequest(f"weekday {day!r} is not one of {', '.join(WEEKDAYS)}")
        for d in self.closed_dates:
            _parse_date(d)

    @classmethod
    def uniform(
        cls, weekdays: tuple[str, ...], opens: str, closes: str, capacity: int
    ) -> WeeklyTemplate:
        """The same single window on each of ``weekdays``."""
        window = Window(opens, closes, capacity)
        return cls(days=tuple((d, (window,)) for d in weekdays))


class Grid(NamedTuple):
    """A UTC slot grid: slot ``i`` starts at ``start + i * slot_seconds``."""

    start: int
    slot_seconds: int
    capacity: np.ndarray


@lru_cache(maxsize=1)
def zone_names() -> frozenset[str]:
    """Every IANA zone name this installation knows (a region such as ``America`` is not
    one)."""
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``, or a clear error."""
    if name not in zone_names():
        raise InvalidRequest(f"time zone {name!r} is not an IANA zone name (e.g. America/Chicago)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidRequest(
            f"time zone {name!r} is not an IANA zone name (e.g. America/Chicago)"
        ) from exc


def local_midnight(tz_name: str, day: date) -> int:
    """UTC seconds of the first instant of local ``day``."""
    tz = zone(tz_name)
    local = datetime(day.year, day.month, day.day, tzinfo=tz)
    # A zone that skips midnight (DST at 00:00) starts the day at the first valid time.
    return int(local.astimezone(UTC).timestamp())


def _parse_date(text: str) -> date:
    # fromisoformat alone would take week dates (2026-W10-1) and 20260301.
    try:
        if not _DATE.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"date {text!r} is not YYYY-MM-DD") from exc


def _parse_local(text: str, tz: ZoneInfo) -> int:
    try:
        if not _LOCAL.fullmatch(text):
            raise ValueError(text)
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"time {text!r} is not ISO 8601 (YYYY-MM-DDTHH:MM)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return int(moment.timestamp())


@lru_cache(maxsize=256)
def _transitions(tz_name: str, start: int, end: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """UTC offset changes in [start, end): (instants, offsets), first instant = start."""
    tz = zone(tz_name)

    def offset(t: int) -> int:
        off = datetime.fromtimestamp(t, tz).utcoffset()
        return int(off.total_seconds()) if off is not None else 0

    instants, offsets = [start], [offset(start)]
    probe = start
    # Offsets change at most once an hour in every zone, so hourly probes see each change;
    # bisection then finds its exact second.
    while probe < end:
        nxt = min(probe + 3600, end)
        if offset(nxt) != offsets[-1]:
            lo, hi = probe, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == offsets[-1]:
                    lo = mid
                else:
                    hi = mid
            instants.append(hi)
            offsets.append(offset(hi))
        probe = nxt
    return tuple(instants), tuple(offsets)


def utc_offsets(tz_name: str, starts: np.ndarray) -> np.ndarray:
    """The UTC offset (seconds) in force at each UTC instant of ``starts`` (sorted)."""
    if starts.size == 0:
        return np.zeros(0, dtype=np.int64)
    instants, offsets = _transitions(tz_name, int(starts[0]), int(starts[-1]) + 1)
    idx = np.searchsorted(np.asarray(instants), starts, side="right") - 1
    return np.asarray(offsets, dtype=np.int64)[idx]


def offset_at(tz_name: str, t: int) -> int:
    """The UTC offset in seconds in force at UTC instant ``t``."""
    instants, offsets = _transitions(tz_name, t, t + 1)
    return offsets[bisect_right(instants, t) - 1]


def build_grid(
    tz_name: str, template: WeeklyTemplate, first_day: date, days: int, slot_minutes: int
) -> Grid:
    """Lay ``days`` local days from ``first_day`` out as UTC slots with their capacity."""
    if not 5 <= slot_minutes <= 240 or 1440 % slot_minutes:
        raise InvalidRequest(
            f"slot length {slot_minutes} min must divide a day and be 5 to 240 minutes"
        )
    if not 1 <= days <= 366:
        raise InvalidRequest(f"horizon of {days} days must be 1 to 366 days")
    if not FIRST_DAY_MIN <= first_day <= FIRST_DAY_MAX:
        raise InvalidRequest(
            f"first day {first_day} must be from {FIRST_DAY_MIN} to {FIRST_DAY_MAX}"
        )
    cached = _build_grid_cached(tz_name, template, first_day, days, slot_minutes)
    # Calendars of one template share the build; each gets its own writable copy.
    return cached._replace(capacity=cached.capacity.copy())


def template_capacity(
    tz_name: str, template: WeeklyTemplate, starts: np.ndarray, slot_seconds: int
) -> np.ndarray:
    """The capacity ``template`` gives each slot starting at ``starts`` (UTC seconds, each
    ``slot_seconds`` long), in the zone ``tz_name``: windows by local weekday and time,
    closed dates and blocked periods. For a calendar's first days and for every day a
    rolling horizon adds later alike."""
    tz = zone(tz_name)
    slot = slot_seconds
    local = starts + utc_offsets(tz_name, starts)
    local_day = local // 86_400
    weekday = (local_day + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    second_of_day = local % 86_400

    capacity = np.zeros(starts.size, dtype=np.uint16)
    for day_name, windows in template.days:
        on_day = weekday == WEEKDAYS.index(day_name)
        for w in windows:
            opens, closes = _minutes(w.opens) * 60, _minutes(w.closes) * 60
            inside = on_day & (second_of_day >= opens) & (second_of_day + slot <= closes)
            capacity[inside] = np.maximum(capacity[inside], w.capacity)

    if template.closed_dates:
        closed = np.array(
            [_parse_date(d).toordinal() - _EPOCH_ORDINAL for d in template.closed_dates]
        )
        capacity[np.isin(local_day, closed)] = 0
    for b in template.blocked:
        b_start, b_end = _parse_local(b.start, tz), _parse_local(b.end, tz)
        if b_end <= b_start:
            raise InvalidRequest(f"blocked period {b.start} to {b.end} ends before it starts")
        capacity[(starts < b_end) & (starts + slot > b_start)] = 0
    return capacity


@lru_cache(maxsize=1024)
def _build_grid_cached(
    tz_name: str, template: WeeklyTemplate, first_day: date, days: int, slot_minutes: int
) -> Grid:
    slot = slot_minutes * 60
    start = local_midnight(tz_name, first_day)
    end = local_midnight(tz_name, first_day + timedelta(days=days))
    capacity = template_capacity(
        tz_name, template, np.arange(start, end, slot, dtype=np.int64), slot
    )
    capacity.flags.writeable = False
    return Grid(start=start, slot_seconds=slot, capacity=capacity)
