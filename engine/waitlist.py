"""The waitlist: patients waiting for a place, and the offers freed places become.

A patient joins with a :class:`WaitEntry`: a service, an area (cells of any resolution,
or a point and a radius), a window of UTC seconds, a party size. When places free up in
a calendar (a hold released or expired, a booking cancelled or moved, capacity added, a
new day), its writer asks :func:`plan_offers` which waiting entries get them, first come
first served (entries that joined in the same second are drawn by lot: a hash of the
entry and the slot, so every replay draws the same). Each planned offer becomes a hold
placed for the entry (``PlaceHold.offer``): it counts against capacity like any hold, so
a place is offered once or stays free, never both.

A patient waits on every shard that could have a place for them, and must not be offered
two places at once. So each offer is first *claimed* for the entry (the caller's job:
:mod:`actors.waitlist` does it in Redis), and an entry offered a place takes no other
while the offer stands; when the offer ends (booked, declined, lapsed) the entry leaves
the waitlist: one offer per entry, the next place goes to the next in line.

:class:`Waitlist` is one writer's list of entries (decide/evolve like a calendar:
:meth:`Waitlist.join` and friends emit :class:`WaitlistJoined` and
:class:`WaitlistLeft`, which :meth:`Waitlist.apply` replays).

>>> area = WaitArea(lat=41.88, lng=-87.63, radius_km=5.0)
>>> e = WaitEntry("w1", "vaccine", area, 0, 10**10, 1, 100, 10**9, "ref", b"")
>>> wl = Waitlist()
>>> _ = wl.join(e, now=100)
>>> site = Provider(provider_id="p1", name="Clinic", lat=41.89, lng=-87.63,
...                 timezone="America/Chicago", services=("vaccine",))
>>> [x.entry_id for x in wl.waiting("vaccine", site, now=200)]
['w1']
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import h3
import msgspec
import numpy as np

from engine.calendar import Calendar
from engine.eligibility import Attestation
from engine.errors import InvalidRequest
from engine.geo import check_area, haversine_km
from engine.provider import Provider
from engine.records import (
    BookingCancelled,
    BookingRescheduled,
    CalendarRolled,
    CapacityChanged,
    Contact,
    Event,
    HoldConfirmed,
    HoldPlaced,
    HoldReleased,
    PlaceHold,
)

__all__ = [
    "Offer",
    "Offers",
    "WaitArea",
    "WaitEntry",
    "WaitEvent",
    "Waitlist",
    "WaitlistJoined",
    "WaitlistLeft",
    "freed_starts",
    "offer_hold",
    "open_starts",
    "plan_offers",
    "validate_entry",
]

LeftReason = Literal["cancelled", "expired", "booked", "declined", "lapsed", "taken"]
# How an offer ends (Offers.observe): the reasons an entry leaves by its own offer.
OFFER_ENDS: frozenset[LeftReason] = frozenset(("booked", "declined", "lapsed"))
MAX_CELLS = 500


class WaitArea(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a patient would go: inside any of ``cells`` (H3, any resolution), or within
    ``radius_km`` of (``lat``, ``lng``)."""

    cells: tuple[str, ...] = ()
    lat: float | None = None
    lng: float | None = None
    radius_km: float | None = None

    def contains(self, lat: float, lng: float) -> bool:
        if self.radius_km is not None and self.lat is not None and self.lng is not None:
            d = float(haversine_km(self.lat, self.lng, np.array(lat), np.array(lng)))
            if not math.isnan(d) and d <= self.radius_km:
                return True
        for cell in self.cells:
            if h3.latlng_to_cell(lat, lng, h3.get_resolution(cell)) == cell:
                return True
        return False


class WaitEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One patient waiting: for ``party_size`` places of ``service`` in ``area``, in a
    slot starting in [``earliest``, ``latest``), until ``expires_at``. The attestation
    and contact details are patient data (sealed at rest, like a booking's)."""

    entry_id: str
    service: str
    area: WaitArea
    earliest: int
    latest: int
    party_size: int
    joined_at: int
    expires_at: int
    patient_ref: str
    token_digest: bytes
    attested: Attestation | None = None
    contact: Contact | None = None


class _WaitEvent(msgspec.Struct, frozen=True, array_like=True, tag_field="t", gc=False):
    """Base of the waitlist's journaled events."""


class WaitlistJoined(_WaitEvent, frozen=True, tag="waitlist_joined.v1"):
    """An entry joined."""

    entry: WaitEntry
    at: int


class WaitlistLeft(_WaitEvent, frozen=True, tag="waitlist_left.v1"):
    """An entry left: ``cancelled`` by its owner, ``expired``, its offer ``booked``,
    ``declined`` (released) or ``lapsed`` (expired), or ``taken`` (offered elsewhere,
    and that offer ended)."""

    entry_id: str
    reason: LeftReason
    at: int


WaitEvent = WaitlistJoined | WaitlistLeft


@dataclass(frozen=True)
class Offer:
    """A place planned for an entry: ``party_size`` places of the slot at ``start``."""

    entry: WaitEntry
    provider_id: str
    service: str
    start: int


def validate_entry(entry: WaitEntry) -> None:
    """Raise :class:`InvalidRequest` for an entry that could never be offered a place."""
    area = entry.area
    if len(area.cells) > MAX_CELLS:
        raise InvalidRequest(f"a waitlist area has at most {MAX_CELLS} cells")
    radius = check_area(area.cells, area.lat, area.lng, area.radius_km, "waitlist area")
    if not radius and not area.cells:
        raise InvalidRequest("a waitlist area needs cells or a point and a radius")
    if not entry.earliest < entry.latest:
        raise InvalidRequest("a waitlist window must end after it begins")
    if not 1 <= entry.party_size <= 100:
        raise InvalidRequest("a waitlist party size is 1 to 100")
    if entry.expires_at <= entry.joined_at:
        raise InvalidRequest("a waitlist entry must expire after it joins")


def _lot(entry_id: str, site: str) -> bytes:
    return hashlib.blake2b(f"{entry_id}/{site}".encode(), digest_size=8).digest()


class Waitlist:
    """One writer's waiting entries, in the order they joined. Not thread-safe."""

    __slots__ = ("_entries", "outbox")

    def __init__(self, entries: Iterable[WaitEntry] = ()) -> None:
        self._entries: dict[str, WaitEntry] = {}
        for e in sorted(entries, key=lambda e: (e.joined_at, e.entry_id)):
            self._entries[e.entry_id] = e
        self.outbox: list[WaitEvent] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    def get(self, entry_id: str) -> WaitEntry | None:
        return self._entries.get(entry_id)

    def entries(self) -> list[WaitEntry]:
        """Every entry, in the order they joined (for a snapshot)."""
        return list(self._entries.values())

    def drain(self) -> list[WaitEvent]:
        events, self.outbox = self.outbox, []
        return events

    # --- decide -------------------------------------------------------------------------

    def join(self, entry: WaitEntry, now: int) -> bool:
        """Add ``entry`` (validated); ``False`` if it is here already (a repeat)."""
        validate_entry(entry)
        if entry.entry_id in self._entries:
            return False
        if entry.expires_at <= now:
            raise InvalidRequest("the waitlist entry has expired already")
        self._emit(WaitlistJoined(entry, now))
        return True

    def leave(self, entry_id: str, reason: LeftReason, now: int) -> bool:
        """Take an entry off; ``False`` if it was not here."""
        if entry_id not in self._entries:
            return False
        self._emit(WaitlistLeft(entry_id, reason, now))
        return True

    def end_offer(self, entry_id: str, reason: LeftReason, now: int) -> None:
        """An offer held for ``entry_id`` ended (``booked``, ``declined``, ``lapsed``):
        the entry leaves, and the event is journaled even when the entry had left this
        list already (it expired meanwhile), so that a replay knows the offer ended."""
        self._emit(WaitlistLeft(entry_id, reason, now))

    def expire(self, now: int) -> int:
        """Take off every entry whose time ran out; return how many."""
        due = [e.entry_id for e in self._entries.values() if e.expires_at <= now]
        for entry_id in due:
            self._emit(WaitlistLeft(entry_id, "expired", now))
        return len(due)

    def waiting(self, service: str, site: Provider, now: int) -> list[WaitEntry]:
        """The live entries that would take a place of ``service`` at ``site``, in turn:
        first come first served, by lot among those that joined in the same second (a
        hash of the entry and the site: every replay draws the same)."""
        matching = [
            e
            for e in self._entries.values()
            if e.service == service and e.expires_at > now and e.area.contains(site.lat, site.lng)
        ]
        matching.sort(key=lambda e: (e.joined_at, _lot(e.entry_id, site.provider_id)))
        return matching

    # --- evolve -------------------------------------------------------------------------

    def _emit(self, event: WaitEvent) -> None:
        self.outbox.append(event)
        self.apply(event)

    def apply(self, event: WaitEvent) -> None:
        """Replay one journaled event."""
        if isinstance(event, WaitlistJoined):
            self._entries[event.entry.entry_id] = event.entry
        else:
            self._entries.pop(event.entry_id, None)


def plan_offers(
    waitlist: Waitlist,
    cal: Calendar,
    provider: Provider,
    starts: Iterable[int],
    now: int,
    busy: Callable[[str], bool],
) -> list[Offer]:
    """Which waiting entries the free places of ``cal``'s slots at ``starts`` go to.

    Slots in time order; each slot's free places to its waiting entries in turn while
    they last (an entry whose party does not fit is passed over, not blocked on). An
    entry for which ``busy`` is true (it holds an offer, here or on another shard) is
    skipped, and so is one planned already in this call. Past slots are not offered."""
    out: list[Offer] = []
    if not len(waitlist):
        return out
    in_turn = [e for e in waitlist.waiting(cal.service, provider, now) if not busy(e.entry_id)]
    planned: set[str] = set()
    for start in sorted(set(starts)):
        if not in_turn:
            break
        if start <= now or not cal.start <= start < cal.end:
            continue
        free = cal.remaining_at(start)
        for entry in in_turn:
            if free <= 0:
                break
            if entry.party_size > free or not entry.earliest <= start < entry.latest:
                continue
            out.append(Offer(entry, cal.provider_id, cal.service, start))
            planned.add(entry.entry_id)
            free -= entry.party_size
        if planned:
            in_turn = [e for e in in_turn if e.entry_id not in planned]
    return out


def offer_hold(offer: Offer, hold_id: str, now: int, ttl: int) -> PlaceHold:
    """The command that places ``offer``'s hold (no idempotency key: the offer is made
    once, in the writer's step that planned it)."""
    e = offer.entry
    return PlaceHold(
        offer.provider_id,
        offer.service,
        None,
        now,
        hold_id,
        offer.start,
        e.party_size,
        ttl,
        e.attested,
        None,
        e.entry_id,
    )


def open_starts(cal: Calendar) -> set[int]:
    """Every slot of ``cal`` with a free place (what a new entry may be offered)."""
    free = np.flatnonzero(cal.remaining() > 0)
    return set((cal.start + free * cal.slot_seconds).tolist())


def freed_starts(cal: Calendar, events: Iterable[Event]) -> set[int]:
    """The slots of ``cal`` where ``events`` (just drained from it) may have freed a
    place: a hold ended, a booking cancelled or moved away; every slot with a free place
    when capacity was set or the window rolled."""
    out: set[int] = set()
    for ev in events:
        if isinstance(ev, HoldReleased):
            out.add(ev.start)
        elif isinstance(ev, BookingCancelled):
            booking = cal.bookings.get(ev.booking_id)
            if booking is not None:
                out.add(booking.start)
        elif isinstance(ev, BookingRescheduled):
            out.add(ev.old_start)
        elif isinstance(ev, CapacityChanged | CalendarRolled):
            out |= open_starts(cal)
    return out


class Offers:
    """The live offers of one writer (hold id -> entry id), kept from the events of
    its calendars: what an ending hold means for the waitlist."""

    __slots__ = ("by_entry", "by_hold")

    def __init__(self) -> None:
        self.by_hold: dict[str, str] = {}
        self.by_entry: dict[str, str] = {}

    @classmethod
    def of(cls, calendars: Iterable[Calendar]) -> Offers:
        """The offers held in ``calendars`` (after a recovery)."""
        offers = cls()
        for cal in calendars:
            for hold in cal.holds.values():
                if hold.offer is not None:
                    offers.by_hold[hold.hold_id] = hold.offer
                    offers.by_entry[hold.offer] = hold.hold_id
        return offers

    def observe(self, events: Iterable[Event]) -> list[tuple[str, str, LeftReason]]:
        """Take in a calendar's events; return the offers they ended: (entry id, hold
        id, how: ``booked``, ``declined`` or ``lapsed``)."""
        ended: list[tuple[str, str, LeftReason]] = []
        for ev in events:
            if isinstance(ev, HoldPlaced):
                if ev.offer is not None:
                    self.by_hold[ev.hold_id] = ev.offer
                    self.by_entry[ev.offer] = ev.hold_id
            elif isinstance(ev, HoldConfirmed | HoldReleased):
                entry_id = self.by_hold.pop(ev.hold_id, None)
                if entry_id is None:
                    continue
                self.by_entry.pop(entry_id, None)
                how: LeftReason = (
                    "booked"
                    if isinstance(ev, HoldConfirmed)
                    else ("declined" if ev.reason == "released" else "lapsed")
                )
                ended.append((entry_id, ev.hold_id, how))
        return ended
