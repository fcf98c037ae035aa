"""What every connector produces (sites with their slots), and how it lands in hexbook.

A connector fetches a source and maps it to :class:`SourceSite` records; :func:`reconcile`
turns those into providers and calendars:

- a site without a position is placed at its US postal code's centroid (the offline
  table of the ``zipcodes`` package; ZIP+4 and codes that lost their leading zero are
  read too), or reported as unplaced; never silently dropped;
- its time zone is the source's, else the one at its position (``timezonefinder``,
  offline), else its postal code's; the offsets the source writes its times with are
  checked against that zone, and a mismatch is reported;
- its provider id is namespaced by its source (``smart-<host>-<hash>-<id>``), so two
  sources with the same site ids never overwrite each other; a site imported before
  under another id keeps that one;
- a new site gets calendars on the finest UTC grid its slots need (their starts and
  lengths, 60 s at the finest; a 15-minute feed gets 15-minute slots, a 9-minute feed
  3-minute ones that keep its starts across DST); each source slot's free places go on
  the grid slot where it starts. A coarse slot (a whole day, "100 places") stays *one*
  slot with all its places at its start; its source length is kept, so hexbook
  publishes it back as it came;
- a known site's calendars are extended when the source has reached new days (a
  rolling feed) and get the new capacity with ``SetCapacity``, which never drops a
  booking: where the source now offers fewer places than are booked, the slot keeps
  its bookings, shows no free place, and the conflict is reported. Past days leave by
  the shard's own daily roll;
- a capacity out of range (negative, or over 65,535 places in a slot) is reported per
  record and not imported, never silently changed;
- each provider records its source, source id and last sync time (Redis hash
  ``hexbook:sources``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import msgspec
import numpy as np
import redis

from engine.errors import HexbookError, InvalidRequest
from engine.provider import Provider
from engine.schedule import CAPACITY_MAX, local_midnight, utc_offsets, zone, zone_names

__all__ = [
    "SOURCES",
    "STEP",
    "ImportSummary",
    "SourceRecord",
    "SourceSite",
    "SourceSlot",
    "geocode",
    "normalize_postal_code",
    "reconcile",
    "source_records",
    "zone_at",
]

SOURCES = "hexbook:sources"
STEP = 900  # seconds: the grid of the operations CSV's calendars (15-minute templates)
MIN_STEP = 60  # the finest grid an imported calendar gets
_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True)
class SourceSlot:
    start: int  # UTC seconds
    end: int
    capacity: int  # free places the source offers (0 for busy)
    offset: int | None = None  # the UTC offset the source wrote ``start`` with, seconds


@dataclass
class SourceSite:
    """One site as a source describes it."""

    source: str  # e.g. "smart:https://example.org/$bulk-publish"
    source_id: str
    name: str
    lat: float | None = None
    lng: float | None = None
    postal_code: str | None = None
    timezone: str | None = None
    state: str = ""  # US state (address), for publishing by state
    # service -> its slots (the whole list when ``complete``, else changes only)
    slots: dict[str, list[SourceSlot]] = field(default_factory=dict)
    complete: bool = True


class SourceRecord(msgspec.Struct):
    """Where a provider comes from (stored per provider in ``hexbook:sources``)."""

    source: str
    source_id: str
    synced_at: int
    slot_seconds: dict[str, int] = {}  # service -> the source's slot length, if uniform
    state: str = ""
    # service -> {slot start: its length}, where lengths vary and exceed the grid step
    slot_lengths: dict[str, dict[str, int]] = {}


@dataclass
class ImportSummary:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)  # "source id: why"
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    placed: dict[str, Provider] = field(default_factory=dict)  # created or updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": len(self.created),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "unplaced": self.unplaced,
            "conflicts": self.conflicts,
            "errors": self.errors,
            "providers": sorted(self.created + self.updated + self.unchanged),
        }

    def text(self) -> str:
        lines = [
            f"created {len(self.created)}, updated {len(self.updated)}, unchanged "
            f"{len(self.unchanged)}, unplaced {len(self.unplaced)}, conflicts "
            f"{len(self.conflicts)}, errors {len(self.errors)}"
        ]
        lines += [f"  unplaced: {x}" for x in self.unplaced]
        lines += [f"  conflict: {x}" for x in self.conflicts]
        lines += [f"  error: {x}" for x in self.errors]
        return "\n".join(lines)


def provider_id_for(source: str, source_id: str) -> str:
    """A stable provider id for a source's site, namespaced by the source:
    ``<connector>-<host or name>-<6 hex of the source>-<source id>``."""
    connector, _, where = source.partition(":")
    host = urlsplit(where).hostname if "://" in where else where
    tag = hashlib.sha1(source.encode()).hexdigest()[:6]
    raw = f"{connector}-{host or 'source'}-{tag}-{source_id}"
    return (_ID_CHARS.sub("-", raw).strip("-._:") or "site")[:128]


def normalize_postal_code(code: str | None) -> str | None:
    """A US ZIP code's five digits: ``02139``, ``02139-4307``, ``021394307`` and
    ``2139-4307`` (a spreadsheet dropped the leading zero) all give ``02139``."""
    if not code:
        return None
    digits = code.strip().split("-", 1)[0].strip()
    if not digits.isascii() or not digits.isdigit():
        return None
    if len(digits) == 9:
        return digits[:5]
    return digits.zfill(5) if 1 <= len(digits) <= 5 else None


@lru_cache(maxsize=1)
def _zone_finder() -> Any:
    from timezonefinder import TimezoneFinder  # offline: the polygons ship with the wheel

    return TimezoneFinder()


def zone_at(lat: float, lng: float) -> str | None:
    """The IANA zone at a position (offline), if it is one this installation knows."""
    name = _zone_finder().timezone_at(lat=lat, lng=lng)
    return name if name in zone_names() else None


def geocode(postal_code: str | None) -> tuple[float, float, str | None] | None:
    """(lat, lng, IANA zone) of a US postal code's centroid, from an offline table."""
    code = normalize_postal_code(postal_code)
    if code is None:
        return None
    import zipcodes

    try:
        found = zipcodes.matching(code)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return None
    if not found:
        return None
    z = found[0]
    try:
        return float(z["lat"]), float(z["long"]), z.get("timezone") or None
    except (KeyError, TypeError, ValueError):
        return None


def source_records(client: redis.Redis) -> dict[str, SourceRecord]:
    """Every imported provider's source record, by provider id."""
    raw: Any = client.hgetall(SOURCES)
    dec = msgspec.json.Decoder(SourceRecord)
    return {(k.decode() if isinstance(k, bytes) else k): dec.decode(v) for k, v in raw.items()}


def _days(slots: list[SourceSlot], tz: str) -> tuple[int, int]:
    """(first local midnight, the local midnight after the last day) the slots cover."""
    first = datetime.fromtimestamp(min(s.start for s in slots), zone(tz)).date()
    last = datetime.fromtimestamp(max(s.start for s in slots), zone(tz)).date()
    return local_midnight(tz, first), local_midnight(tz, last + timedelta(days=1))


def _step(slots: list[SourceSlot], origin: int) -> int:
    """The finest grid the slots need from ``origin``: every start and every length a
    whole number of steps (a step that divides a day, and the hour DST moves by)."""
    g = 3600
    for s in slots:
        g = math.gcd(g, s.start - origin, s.end - s.start)
    return max(g, MIN_STEP)


def _grid(slots: list[SourceSlot], tz: str, step: int) -> tuple[int, int]:
    """(start, slot count) of a ``step`` grid over the local days the slots cover."""
    start, end = _days(slots, tz)
    return start, -(-(end - start) // step)


def _capacity(
    slots: list[SourceSlot], start: int, n: int, step: int
) -> tuple[np.ndarray, int, list[int]]:
    """Capacity per grid slot, how many source slots fell outside the grid, and the grid
    slots whose places add up to more than a slot holds (left at 0: not imported)."""
    cap = np.zeros(n, dtype=np.int64)
    outside = 0
    for s in slots:
        i = (s.start - start) // step
        if 0 <= i < n:
            cap[i] += s.capacity
        else:
            outside += 1
    over = np.flatnonzero(cap > CAPACITY_MAX)
    cap[over] = 0
    return cap, outside, [start + int(i) * step for i in over]


def _uniform_length(slots: list[SourceSlot]) -> int | None:
    lengths = {s.end - s.start for s in slots}
    return lengths.pop() if len(lengths) == 1 else None


def reconcile(
    hb: Any,
    client: redis.Redis,
    sites: list[SourceSite],
    *,
    default_timezone: str = "America/New_York",
    now: int | None = None,
) -> ImportSummary:
    """Create or update providers and calendars from ``sites``; see the module doc."""
    now = int(time.time()) if now is None else now
    summary = ImportSummary()
    known = source_records(client)
    for site in sites:
        try:
            _one(hb, client, site, known, summary, default_timezone, now)
        except HexbookError as exc:
            summary.errors.append(f"{site.source_id}: {exc}")
    return summary


def _one(
    hb: Any,
    client: redis.Redis,
    site: SourceSite,
    known: dict[str, SourceRecord],
    summary: ImportSummary,
    default_tz: str,
    now: int,
) -> None:
    pid = _provider_id(site, known)
    lat, lng, tz = site.lat, site.lng, site.timezone
    postal_zone = None
    if lat is None or lng is None:
        found = geocode(site.postal_code)
        if found is None:
            why = (
                f"no position, and postal code {site.postal_code!r} is not in the table"
                if site.postal_code
                else "no position and no postal code"
            )
            summary.unplaced.append(f"{site.source_id} ({site.name}): {why}")
            return
        lat, lng, postal_zone = found
    services = {s: v for s, v in site.slots.items() if v or not site.complete}
    if not services:
        summary.unplaced.append(f"{site.source_id} ({site.name}): no schedule with slots")
        return
    tz = tz or zone_at(lat, lng) or postal_zone or default_tz
    _check_offsets(site, tz, summary)
    provider = Provider(
        provider_id=pid,
        name=site.name or site.source_id,
        lat=round(lat, 6),
        lng=round(lng, 6),
        timezone=tz,
        services=tuple(sorted(services)),
    )
    record = known.get(pid)
    existing: dict[str, dict[str, Any]] = {}
    if record is not None:
        for service in services:
            with contextlib.suppress(HexbookError):
                existing[service] = hb.slots(pid, service)
    steps = {
        service: _step(slots, _days(slots, tz)[0]) if slots else existing[service]["slot_seconds"]
        for service, slots in services.items()
        if slots or service in existing
    }
    same = (
        record is not None
        and set(existing) == set(services)
        and all(existing[s]["slot_seconds"] == steps.get(s) for s in services)
    )
    if not same:
        busy = [s for s, g in existing.items() if any(g["booked"]) or any(g["held"])]
        if busy:
            summary.conflicts.append(
                f"{pid}: services or slot lengths changed ({sorted(existing)} to "
                f"{sorted(services)}) but {', '.join(busy)} has bookings; not changed"
            )
            return
        grids = {}
        for service, slots in services.items():
            step = steps[service]
            start, n = _grid(slots, tz, step)
            cap, _, over = _capacity(slots, start, n, step)
            _report_over(summary, pid, service, tz, over)
            grids[service] = (start, step, cap)
        hb.provision_grid(provider, grids)
        summary.placed[pid] = provider
        (summary.updated if record is not None else summary.created).append(pid)
    else:
        changed = False
        for service, slots in services.items():
            changed |= _update(hb, pid, service, slots, site.complete, tz, now, summary)
        (summary.updated if changed else summary.unchanged).append(pid)
    lengths: dict[str, int] = {}
    varying: dict[str, dict[str, int]] = {}
    for service, slots in services.items():
        uniform = _uniform_length(slots)
        if uniform and uniform > steps.get(service, STEP):
            lengths[service] = uniform
        elif uniform is None and slots:
            varying[service] = {
                str(x.start): x.end - x.start for x in slots if x.end - x.start > steps[service]
            }
    rec = SourceRecord(site.source, site.source_id, now, lengths, site.state, varying)
    client.hset(SOURCES, pid, msgspec.json.encode(rec))
    known[pid] = rec


def _update(
    hb: Any,
    pid: str,
    service: str,
    slots: list[SourceSlot],
    complete: bool,
    tz: str,
    now: int,
    summary: ImportSummary,
    attempts: int = 3,
) -> bool:
    """New capacity for a known calendar (extended first when the source reached new
    days); whether anything changed. The capacity is placed against the window read
    first: if the shard's daily roll moves that window before the capacity arrives, the
    calendar refuses it (its length changed) and this places it again, on the new one."""
    for attempt in range(attempts):
        g = hb.slots(pid, service)
        step, start = g["slot_seconds"], g["start"]
        end = start + len(g["capacity"]) * step
        if slots:
            needed = start + -(-(_days(slots, tz)[1] - start) // step) * step
            if needed > end:  # a rolling feed reached new days: the calendar takes them
                hb.extend(pid, service, needed, now=now)
                g = hb.slots(pid, service)
                # The grid as it is now: the shard's daily roll may have moved its start
                # since the first read (the feed's slots are placed against this one).
                step, start = g["slot_seconds"], g["start"]
        n = len(g["capacity"])
        current = np.asarray(g["capacity"], dtype=np.int64)
        targets = {int(i): int(t) for i, t in g["targets"]}
        asked = current.copy()  # what was asked last: a slot set below its bookings asked less
        for i, t in targets.items():
            asked[i] = t
        wanted = asked.copy()
        if complete and slots:
            # The source speaks for the days it lists; the days it no longer lists (a
            # rolling feed's past ones) keep what they had, and leave with the daily roll.
            fed, outside, over = _capacity(slots, start, n, step)
            lo, hi = _days(slots, tz)
            a, b = max((lo - start) // step, 0), min(-(-(hi - start) // step), n)
            wanted[a:b] = fed[a:b]
        else:
            outside, over = 0, []
            for s in slots:
                i = (s.start - start) // step
                if not 0 <= i < n:
                    outside += 1
                elif s.capacity > CAPACITY_MAX:
                    over.append(s.start)
                else:
                    wanted[i] = s.capacity
        changed = not np.array_equal(asked, wanted)
        if not changed:  # nothing new; a conflict still standing is reported until resolved
            conflicts = [
                (start + i * step, g["booked"][i] + g["held"][i], t)
                for i, t in sorted(targets.items())
            ]
            break
        try:
            conflicts = hb.set_capacity(pid, service, wanted, now=now)
            break
        except InvalidRequest:
            moved = hb.slots(pid, service)
            if attempt + 1 < attempts and (moved["start"], len(moved["capacity"])) != (start, n):
                continue  # the window moved under this import: place it on the new one
            raise
    _report_over(summary, pid, service, tz, over)
    if outside:
        summary.conflicts.append(
            f"{pid}/{service}: {outside} slot(s) before the calendar's first day were not imported"
        )
    for slot_start, taken, want in conflicts:
        at = datetime.fromtimestamp(slot_start, UTC).astimezone(zone(tz)).isoformat()
        summary.conflicts.append(
            f"{pid}/{service} {at}: the source offers {want} place(s), {taken} are "
            "booked or held in hexbook; kept them, no place free"
        )
    return changed or bool(g["start"] != start)


def _provider_id(site: SourceSite, known: dict[str, SourceRecord]) -> str:
    """The id a site had from an earlier import of the same source, else a new one."""
    for pid, rec in known.items():
        if rec.source == site.source and rec.source_id == site.source_id:
            return pid
    return provider_id_for(site.source, site.source_id)


def _check_offsets(site: SourceSite, tz: str, summary: ImportSummary) -> None:
    """Report a site whose source writes its times at other offsets than its zone."""
    written = [(s.start, s.offset) for v in site.slots.values() for s in v if s.offset is not None]
    if not written:
        return
    starts = np.array([t for t, _ in written], dtype=np.int64)
    expected = utc_offsets(tz, starts)
    wrong = [o for (_, o), e in zip(written, expected.tolist(), strict=True) if o != e]
    if wrong:
        o = wrong[0]
        summary.errors.append(
            f"{site.source_id} ({site.name}): its zone {tz} (from its position) is at "
            f"UTC{_hhmm(int(expected[0]))} but the source writes {len(wrong)} time(s) at "
            f"UTC{_hhmm(o)}; the times were imported as instants, shown in {tz}"
        )


def _report_over(summary: ImportSummary, pid: str, service: str, tz: str, over: list[int]) -> None:
    for at in over:
        local = datetime.fromtimestamp(at, UTC).astimezone(zone(tz)).isoformat()
        summary.errors.append(
            f"{pid}/{service} {local}: more than {CAPACITY_MAX:,} places in one slot; not imported"
        )


def _hhmm(seconds: int) -> str:
    sign = "+" if seconds >= 0 else "-"
    h, m = divmod(abs(seconds) // 60, 60)
    return f"{sign}{h:02d}:{m:02d}"
