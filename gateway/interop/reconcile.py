"""What every connector produces (sites with their slots), and how it lands in hexbook.

A connector fetches a source and maps it to :class:`SourceSite` records; :func:`reconcile`
turns those into providers and calendars:

- a site without a position is placed at its US postal code's centroid (the offline
  table of the ``zipcodes`` package), or reported as unplaced; never silently dropped;
- a new site gets calendars on a 15-minute UTC grid over the local days its slots
  cover; each source slot's free places go on the grid slot where it starts. A coarse
  slot (a whole day, "100 places") stays *one* slot with all its places at its start:
  spreading 100 places over 36 quarter hours would round and invent times the source
  never offered. Its source length is kept, so hexbook publishes it back as it came;
- a known site's calendars get the new capacity with ``SetCapacity``, which never
  drops a booking: where the source now offers fewer places than are booked, the slot
  keeps its bookings, shows no free place, and the conflict is reported;
- each provider records its source, source id and last sync time (Redis hash
  ``hexbook:sources``).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import redis

from engine.errors import HexbookError
from engine.provider import Provider
from engine.schedule import local_midnight, zone

__all__ = [
    "SOURCES",
    "STEP",
    "ImportSummary",
    "SourceRecord",
    "SourceSite",
    "SourceSlot",
    "geocode",
    "reconcile",
    "source_records",
]

SOURCES = "hexbook:sources"
STEP = 900  # seconds: the grid of imported calendars
_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True)
class SourceSlot:
    start: int  # UTC seconds
    end: int
    capacity: int  # free places the source offers (0 for busy)


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


def provider_id_for(source_name: str, source_id: str) -> str:
    """A stable provider id for a source's site: ``<prefix>-<source id>``."""
    return (_ID_CHARS.sub("-", f"{source_name}-{source_id}").strip("-._:") or "site")[:128]


def geocode(postal_code: str | None) -> tuple[float, float, str | None] | None:
    """(lat, lng, IANA zone) of a US postal code's centroid, from an offline table."""
    if not postal_code:
        return None
    import zipcodes

    code = postal_code.strip()[:5]
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


def _grid(slots: list[SourceSlot], tz: str) -> tuple[int, int]:
    """(start, slot count) of a 15-minute grid over the local days the slots cover."""
    first = datetime.fromtimestamp(min(s.start for s in slots), zone(tz)).date()
    last = datetime.fromtimestamp(max(s.start for s in slots), zone(tz)).date()
    start = local_midnight(tz, first)
    end = local_midnight(tz, last + timedelta(days=1))
    return start, (end - start) // STEP


def _capacity(slots: list[SourceSlot], start: int, n: int) -> tuple[np.ndarray, int]:
    """Capacity per grid slot, and how many source slots fell outside the grid."""
    cap = np.zeros(n, dtype=np.int64)
    outside = 0
    for s in slots:
        i = (s.start - start) // STEP
        if 0 <= i < n:
            cap[i] += s.capacity
        else:
            outside += 1
    return np.minimum(cap, 65_535), outside


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
    name = site.source.split(":", 1)[0]
    pid = provider_id_for(name, site.source_id)
    lat, lng, tz = site.lat, site.lng, site.timezone
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
        lat, lng, tz = found[0], found[1], tz or found[2]
    services = {s: v for s, v in site.slots.items() if v or not site.complete}
    if not services:
        summary.unplaced.append(f"{site.source_id} ({site.name}): no schedule with slots")
        return
    tz = tz or default_tz
    provider = Provider(
        provider_id=pid,
        name=site.name or site.source_id,
        lat=round(lat, 6),
        lng=round(lng, 6),
        timezone=tz,
        services=tuple(sorted(services)),
    )
    record = known.get(pid)
    lengths = {s: n for s, v in services.items() if (n := _uniform_length(v)) and n > STEP}
    existing: dict[str, dict[str, Any]] = {}
    if record is not None:
        for service in services:
            with contextlib.suppress(HexbookError):
                existing[service] = hb.slots(pid, service)
    same_services = record is not None and set(existing) == set(services)
    if not same_services:
        busy = [s for s, g in existing.items() if any(g["booked"]) or any(g["held"])]
        if busy:
            summary.conflicts.append(
                f"{pid}: services changed from {sorted(existing)} to {sorted(services)} "
                f"but {', '.join(busy)} has bookings; not changed"
            )
            return
        grids = {}
        for service, slots in services.items():
            start, n = _grid(slots, tz)
            cap, _ = _capacity(slots, start, n)
            grids[service] = (start, STEP, cap)
        hb.provision_grid(provider, grids)
        summary.placed[pid] = provider
        (summary.updated if record is not None else summary.created).append(pid)
    else:
        changed = False
        for service, slots in services.items():
            g = existing[service]
            start, n = g["start"], len(g["capacity"])
            if g["slot_seconds"] != STEP:
                summary.conflicts.append(f"{pid}/{service}: not an imported calendar; skipped")
                continue
            current = np.asarray(g["capacity"], dtype=np.int64)
            if site.complete:
                wanted, outside = _capacity(slots, start, n)
            else:
                wanted, outside = current.copy(), 0
                for s in slots:
                    i = (s.start - start) // STEP
                    if 0 <= i < n:
                        wanted[i] = s.capacity
                    else:
                        outside += 1
            if outside:
                summary.conflicts.append(
                    f"{pid}/{service}: {outside} slot(s) outside the calendar's days "
                    "were not imported"
                )
            targets = {int(i): int(t) for i, t in g["targets"]}
            asked = current.copy()
            for i, t in targets.items():
                asked[i] = t
            if np.array_equal(asked, wanted):
                # Nothing new; a conflict still standing is reported until it is resolved.
                conflicts = [
                    (start + i * STEP, g["booked"][i] + g["held"][i], t)
                    for i, t in sorted(targets.items())
                ]
            else:
                conflicts = hb.set_capacity(pid, service, wanted, now=now)
                changed = True
            for slot_start, taken, want in conflicts:
                at = datetime.fromtimestamp(slot_start, UTC).astimezone(zone(tz)).isoformat()
                summary.conflicts.append(
                    f"{pid}/{service} {at}: the source offers {want} place(s), {taken} are "
                    "booked or held in hexbook; kept them, no place free"
                )
        (summary.updated if changed else summary.unchanged).append(pid)
    rec = SourceRecord(site.source, site.source_id, now, lengths, site.state)
    client.hset(SOURCES, pid, msgspec.json.encode(rec))
    known[pid] = rec
