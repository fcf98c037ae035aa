"""What a patient is told, and when: one notice per message-worthy event.

A calendar's events become notices (:func:`notices_of`) for the bookings and offers that
have someone to tell (contact details): a booking confirmed, cancelled or moved, a place
offered from the waitlist. Two more are due at a time rather than on an event: an offer
about to lapse, and a reminder the day before the appointment; :class:`Timers` keeps
them in order of when they fall due.

Every notice has a ``notice_id`` made from what it is about (``booking.confirmed:<id>``,
``booking.reminder:<id>:<start>``...), never from when it was made, so a notice made
twice (a timer re-armed after a restart) is the same notice, and whoever delivers it
delivers it once.

>>> from engine.records import Contact
>>> n = Notice("booking.cancelled:b1", "booking.cancelled", 10, Contact("a@b.org"), "r",
...            "p1", "vaccine", 3600, "Clinic", "America/Chicago", booking_id="b1")
>>> n.contact.language
'en'
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Literal, get_args

import msgspec

from engine.calendar import Calendar
from engine.provider import Provider
from engine.records import (
    Booking,
    BookingCancelled,
    BookingRescheduled,
    Contact,
    Event,
    HoldConfirmed,
    HoldPlaced,
)

__all__ = ["KINDS", "REMIND_BEFORE", "Kind", "Notice", "Timers", "notices_of"]

Kind = Literal[
    "booking.confirmed",
    "booking.cancelled",
    "booking.rescheduled",
    "booking.reminder",
    "offer.made",
    "offer.expiring",
]
KINDS: tuple[Kind, ...] = get_args(Kind)
REMIND_BEFORE = 86_400  # the reminder: a day before the appointment


class Notice(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One message to one patient about one thing. ``start`` is the slot (UTC seconds),
    at the site named ``site`` in time zone ``timezone`` (what the message shows);
    ``old_start`` where a booking moved from; ``expires_at`` when an offer lapses."""

    notice_id: str
    kind: Kind
    at: int
    contact: Contact
    patient_ref: str
    provider_id: str
    service: str
    start: int
    site: str
    timezone: str
    booking_id: str | None = None
    hold_id: str | None = None
    entry_id: str | None = None
    old_start: int | None = None
    expires_at: int | None = None


def _booking(
    kind: Kind, cal: Calendar, site: Provider, b: Booking, at: int, notice_id: str
) -> Notice | None:
    if b.contact is None:
        return None
    return Notice(
        notice_id, kind, at, b.contact, b.patient_ref, cal.provider_id, cal.service, b.start,
        site.name, site.timezone, booking_id=b.booking_id,
    )  # fmt: skip


def notices_of(
    cal: Calendar,
    site: Provider,
    events: Iterable[Event],
    offered_to: Callable[[str], tuple[str, Contact] | None],
) -> list[Notice]:
    """The notices ``events`` (just drained from ``cal``, the calendar of ``site``) make.
    ``offered_to`` gives, for
    a waitlist entry id, its patient reference and contact details (``None``: nobody
    to tell)."""
    out: list[Notice] = []
    bookings = cal.bookings
    for ev in events:
        n: Notice | None = None
        if type(ev) is HoldConfirmed:
            if ev.contact is None:
                continue
            b = bookings[ev.booking_id]
            nid = f"booking.confirmed:{b.booking_id}"
            n = _booking("booking.confirmed", cal, site, b, ev.at, nid)
        elif type(ev) is BookingCancelled:
            b = bookings[ev.booking_id]
            nid = f"booking.cancelled:{b.booking_id}"
            n = _booking("booking.cancelled", cal, site, b, ev.at, nid)
        elif type(ev) is BookingRescheduled:
            b = bookings[ev.booking_id]
            nid = f"booking.rescheduled:{b.booking_id}:{ev.new_start}"
            n = _booking("booking.rescheduled", cal, site, b, ev.at, nid)
            if n is not None:
                n = msgspec.structs.replace(n, old_start=ev.old_start)
        elif type(ev) is HoldPlaced and ev.offer is not None:
            who = offered_to(ev.offer)
            if who is None:
                continue
            n = Notice(
                f"offer.made:{ev.hold_id}", "offer.made", ev.at, who[1], who[0],
                cal.provider_id, cal.service, ev.start, site.name, site.timezone,
                hold_id=ev.hold_id, entry_id=ev.offer, expires_at=ev.at + ev.ttl,
            )  # fmt: skip
        if n is not None:
            out.append(n)
    return out


class Timers:
    """Notices due at a time: reminders (a day before a booking with contact details)
    and offers about to lapse. Kept in memory in order of when they fall due; after a
    restart they are armed again from the calendars (a notice made twice is the same
    notice). Not thread-safe: one writer."""

    __slots__ = ("_heap", "lead")

    def __init__(self, lead: int) -> None:
        self.lead = lead  # an offer's "expiring" notice: this long before it lapses
        self._heap: list[tuple[int, str, str, str, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def arm_booking(self, cal: Calendar, b: Booking) -> None:
        """A reminder for ``b`` a day before it, if it was made more than a day before."""
        if (
            b.contact is not None
            and b.status == "active"
            and b.created_at < b.start - REMIND_BEFORE
        ):
            due = b.start - REMIND_BEFORE
            heapq.heappush(self._heap, (due, "r", cal.provider_id, cal.service, b.booking_id))

    def arm_offer(self, cal: Calendar, hold_id: str, expires_at: int) -> None:
        heapq.heappush(
            self._heap, (expires_at - self.lead, "o", cal.provider_id, cal.service, hold_id)
        )

    def arm_all(self, calendars: Iterable[Calendar]) -> None:
        """Arm every timer the calendars call for (after a recovery)."""
        for cal in calendars:
            for b in cal.bookings.values():
                self.arm_booking(cal, b)
            for h in cal.holds.values():
                if h.offer is not None:
                    self.arm_offer(cal, h.hold_id, h.expires_at)

    def due(
        self,
        now: int,
        calendar: Callable[[str, str], tuple[Calendar, Provider] | None],
        offered_to: Callable[[str], tuple[str, Contact] | None],
    ) -> list[Notice]:
        """The notices due by ``now`` whose subject still stands: the booking active, at
        the same time and still ahead; the offer still held."""
        out: list[Notice] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, what, pid, service, ref = heapq.heappop(heap)
            found = calendar(pid, service)
            if found is None:
                continue
            cal, site = found
            if what == "r":
                b = cal.bookings.get(ref)
                if (
                    b is None
                    or b.status != "active"
                    or b.contact is None
                    or b.start - REMIND_BEFORE != when
                    or b.start <= now
                ):
                    continue  # cancelled, moved (re-armed at its new time), past, erased
                nid = f"booking.reminder:{b.booking_id}:{b.start}"
                n = _booking("booking.reminder", cal, site, b, now, nid)
                if n is not None:
                    out.append(n)
            else:
                h = cal.holds.get(ref)
                if h is None or h.offer is None or h.expires_at <= now:
                    continue
                who = offered_to(h.offer)
                if who is None:
                    continue
                n = Notice(
                    f"offer.expiring:{h.hold_id}", "offer.expiring", now, who[1], who[0],
                    pid, service, h.start, site.name, site.timezone, hold_id=h.hold_id,
                    entry_id=h.offer, expires_at=h.expires_at,
                )  # fmt: skip
                out.append(n)
        return out
