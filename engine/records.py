"""Typed, versioned records: commands a calendar accepts, events it emits, its state.

Each record is a frozen ``msgspec.Struct`` whose tag carries its schema version
(``"hold_placed.v1"``); :mod:`engine.codec` turns them into msgpack and back.

Times are integers: seconds since the Unix epoch, UTC. The engine never reads a clock;
every command carries ``now`` from the caller.

Idempotency: a command with a ``key`` is remembered with its *fingerprint* (the fields
the client chose; not ``now``, not server-generated ids). A repeat with the same key
and fingerprint returns the first result; with another fingerprint it is an error.
Each event can rebuild the fingerprint of the command that caused it, so replaying the
journal rebuilds the idempotency table as well as the slots.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from engine.eligibility import Attestation, Rule
from engine.schedule import WeeklyTemplate

__all__ = [
    "AttendanceMarked",
    "Booking",
    "BookingCancelled",
    "BookingRescheduled",
    "CalendarRolled",
    "CalendarSchedule",
    "CalendarSnapshot",
    "CancelBooking",
    "CapacityChanged",
    "Command",
    "ConfirmHold",
    "Contact",
    "ErasePatientData",
    "Event",
    "ExpireHolds",
    "ExpiredHold",
    "Fingerprint",
    "Hold",
    "HoldConfirmed",
    "HoldPlaced",
    "HoldReleased",
    "IdempotencyEntry",
    "MarkAttendance",
    "PatientDataErased",
    "PlaceHold",
    "Record",
    "ReleaseHold",
    "RescheduleBooking",
    "Result",
    "RollCalendar",
    "SetCapacity",
]

Fingerprint = tuple[object, ...]


class Contact(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """How to reach a patient about their booking (reminders, offers): patient data,
    sealed at rest with the rest of the journal, dropped by an erasure."""

    email: str | None = None
    phone: str | None = None
    language: str = "en"  # of the messages about the booking (engine.notices)


class _Record(msgspec.Struct, frozen=True, array_like=True, tag_field="t", gc=False):
    """Base of every encoded record (array-like: compact, positional)."""


# --- state records ---------------------------------------------------------------


class Hold(_Record, frozen=True, order=True, tag="hold.v1"):
    """Capacity reserved for a short time; confirm it before ``expires_at``.

    Holds order by expiry first (the field order matters): the calendar keeps them in
    its expiry heap as they are, with no wrapper tuple."""

    expires_at: int
    hold_id: str
    start: int
    party_size: int
    attested: Attestation | None = None  # what the patient attested, for the confirm
    offer: str | None = None  # the waitlist entry this hold is offered to (engine.waitlist)


class Booking(_Record, frozen=True, tag="booking.v1"):
    """A confirmed appointment. ``token_digest`` proves the right to read or cancel it."""

    booking_id: str
    start: int
    party_size: int
    patient_ref: str
    token_digest: bytes
    hold_id: str
    created_at: int
    status: Literal["active", "cancelled"] = "active"
    # What the patient attested and the eligibility rule (name, version) that admitted
    # the booking at its confirm; the series (of doses) it belongs to.
    attested: Attestation | None = None
    rule: str | None = None
    rule_version: int | None = None
    series_id: str | None = None
    contact: Contact | None = None
    erased_at: int | None = None  # when its patient data (attested, contact) was erased
    # Whether the patient came, as the site marked it once the slot had started.
    attendance: Literal["attended", "no_show"] | None = None

    @property
    def has_patient_data(self) -> bool:
        return self.attested is not None or self.contact is not None


class ExpiredHold(_Record, frozen=True, tag="expired_hold.v1"):
    """A hold that ran out, kept so that a late confirm is told ``hold_expired``."""

    hold_id: str
    at: int


Result = Hold | Booking


class CalendarSchedule(_Record, frozen=True, tag="calendar_schedule.v1"):
    """How a calendar is laid out and kept: its provider's time zone and slot length,
    and, for a calendar made from a weekly template, the template and how many local
    days ahead it keeps open (its rolling horizon). An imported calendar has no
    template: its days come from the imports."""

    timezone: str
    slot_minutes: int
    template: WeeklyTemplate | None = None
    horizon_days: int = 0


# --- commands ----------------------------------------------------------------------


class PlaceHold(_Record, frozen=True, tag="place_hold.v1"):
    """Reserve ``party_size`` places of the slot starting at ``start`` for ``ttl`` s."""

    provider_id: str
    service: str
    key: str | None
    now: int
    hold_id: str
    start: int
    party_size: int
    ttl: int
    # What the patient attested, and the eligibility rule in force (checked here; not
    # journaled, the event keeps its name and version).
    attested: Attestation | None = None
    rule: Rule | None = None
    offer: str | None = None  # placed for this waitlist entry (engine.waitlist)

    def fingerprint(self) -> Fingerprint:
        return ("hold", self.start, self.party_size, self.ttl, self.attested)


class ConfirmHold(_Record, frozen=True, tag="confirm_hold.v1"):
    """Turn a live hold into a booking."""

    provider_id: str
    service: str
    key: str | None
    now: int
    hold_id: str
    booking_id: str
    token_digest: bytes
    patient_ref: str
    rule: Rule | None = None  # the eligibility rule in force now: checked again here
    series_id: str | None = None
    contact: Contact | None = None

    def fingerprint(self) -> Fingerprint:
        return ("confirm", self.hold_id, self.patient_ref, self.contact)


class ReleaseHold(_Record, frozen=True, tag="release_hold.v1"):
    """Give a hold's capacity back."""

    provider_id: str
    service: str
    key: str | None
    now: int
    hold_id: str

    def fingerprint(self) -> Fingerprint:
        return ("release", self.hold_id)


class CancelBooking(_Record, frozen=True, tag="cancel_booking.v1"):
    """Cancel a booking and free its places."""

    provider_id: str
    service: str
    key: str | None
    now: int
    booking_id: str

    def fingerprint(self) -> Fingerprint:
        return ("cancel", self.booking_id)


class RescheduleBooking(_Record, frozen=True, tag="reschedule_booking.v1"):
    """Move a booking to another slot of the same calendar, all or nothing."""

    provider_id: str
    service: str
    key: str | None
    now: int
    booking_id: str
    new_start: int

    def fingerprint(self) -> Fingerprint:
        return ("reschedule", self.booking_id, self.new_start)


class MarkAttendance(_Record, frozen=True, tag="mark_attendance.v1"):
    """The site says whether the patient of a booking came (once its slot has started)."""

    provider_id: str
    service: str
    key: str | None
    now: int
    booking_id: str
    attendance: Literal["attended", "no_show"]

    def fingerprint(self) -> Fingerprint:
        return ("attendance", self.booking_id, self.attendance)


class ExpireHolds(_Record, frozen=True, tag="expire_holds.v1"):
    """Release every hold whose expiry is at or before ``now`` (the periodic sweep)."""

    provider_id: str
    service: str
    now: int


class SetCapacity(_Record, frozen=True, tag="set_capacity.v1"):
    """Set every slot's capacity (``uint16`` bytes, one per slot), e.g. from a re-import.

    Never drops a booking or a hold: a slot set below what is taken keeps capacity equal
    to what is taken (no free place) and remembers the target, which it falls to as
    places are given back."""

    provider_id: str
    service: str
    key: str | None
    now: int
    capacity: bytes

    def fingerprint(self) -> Fingerprint:
        return ("capacity", self.capacity.hex())


class RollCalendar(_Record, frozen=True, tag="roll_calendar.v1"):
    """Move a calendar's window on: slots before ``start`` leave (their bookings go to
    the archive, a hold left on one is expired), slots from the old end to ``end`` are
    added with ``capacity`` (``uint16`` bytes, one per new slot), and idempotency
    records and expired-hold ids older than ``forget_before`` are forgotten. What a
    template or an import gives the new days is decided before (:mod:`engine.horizon`),
    so the event replays without them."""

    provider_id: str
    service: str
    now: int
    start: int
    end: int
    capacity: bytes
    forget_before: int


class ErasePatientData(_Record, frozen=True, tag="erase_patient_data.v1"):
    """Drop the patient data (attested, contact) of some bookings: ``patient_ref``'s
    (an erasure asked for), or those whose appointment ended at or before ``ended_by``
    (the retention period ran out). The bookings stay, without it; so do the keys that
    would show it again (remembered results), forgotten."""

    provider_id: str
    service: str
    now: int
    patient_ref: str | None = None
    ended_by: int | None = None


Command = (
    PlaceHold
    | ConfirmHold
    | ReleaseHold
    | CancelBooking
    | RescheduleBooking
    | MarkAttendance
    | ExpireHolds
    | SetCapacity
    | RollCalendar
    | ErasePatientData
)


# --- events ------------------------------------------------------------------------


class HoldPlaced(_Record, frozen=True, tag="hold_placed.v1"):
    """A hold was placed."""

    hold_id: str
    start: int
    party_size: int
    at: int
    ttl: int
    key: str | None
    attested: Attestation | None = None
    offer: str | None = None

    def fingerprint(self) -> Fingerprint:
        return ("hold", self.start, self.party_size, self.ttl, self.attested)


class HoldConfirmed(_Record, frozen=True, tag="hold_confirmed.v1"):
    """A hold became a booking."""

    hold_id: str
    booking_id: str
    token_digest: bytes
    patient_ref: str
    at: int
    key: str | None
    rule: str | None = None  # the eligibility rule (name, version) that admitted it
    rule_version: int | None = None
    series_id: str | None = None
    contact: Contact | None = None

    def fingerprint(self) -> Fingerprint:
        return ("confirm", self.hold_id, self.patient_ref, self.contact)


class HoldReleased(_Record, frozen=True, tag="hold_released.v1"):
    """A hold ended without a booking: released by its owner or expired."""

    hold_id: str
    start: int
    reason: Literal["released", "expired"]
    at: int
    key: str | None

    def fingerprint(self) -> Fingerprint:
        return ("release", self.hold_id)


class BookingCancelled(_Record, frozen=True, tag="booking_cancelled.v1"):
    """A booking was cancelled."""

    booking_id: str
    at: int
    key: str | None

    def fingerprint(self) -> Fingerprint:
        return ("cancel", self.booking_id)


class BookingRescheduled(_Record, frozen=True, tag="booking_rescheduled.v1"):
    """A booking moved from ``old_start`` to ``new_start``."""

    booking_id: str
    old_start: int
    new_start: int
    at: int
    key: str | None

    def fingerprint(self) -> Fingerprint:
        return ("reschedule", self.booking_id, self.new_start)


class AttendanceMarked(_Record, frozen=True, tag="attendance_marked.v1"):
    """A booking's patient came, or did not (a no-show)."""

    booking_id: str
    attendance: Literal["attended", "no_show"]
    at: int
    key: str | None

    def fingerprint(self) -> Fingerprint:
        return ("attendance", self.booking_id, self.attendance)


class CapacityChanged(_Record, frozen=True, tag="capacity_changed.v1"):
    """Capacity set from ``capacity`` (uint16 bytes per slot), see :class:`SetCapacity`."""

    capacity: bytes
    at: int
    key: str | None

    def fingerprint(self) -> Fingerprint:
        return ("capacity", self.capacity.hex())


class CalendarRolled(_Record, frozen=True, tag="calendar_rolled.v1"):
    """The window moved to [``start``, ``end``), see :class:`RollCalendar`. ``archived``:
    the bookings of the slots that left, as they were (kept in the archive)."""

    start: int
    end: int
    capacity: bytes
    forget_before: int
    archived: list[Booking]
    at: int
    key: None = None


class PatientDataErased(_Record, frozen=True, tag="patient_data_erased.v1"):
    """The patient data of ``booking_ids`` was dropped (``reason``: ``request`` or
    ``retention``), and the remembered results that held it forgotten."""

    booking_ids: list[str]
    reason: Literal["request", "retention"]
    at: int
    key: None = None


Event = (
    HoldPlaced
    | HoldConfirmed
    | HoldReleased
    | BookingCancelled
    | BookingRescheduled
    | AttendanceMarked
    | CapacityChanged
    | CalendarRolled
    | PatientDataErased
)


class IdempotencyEntry(_Record, frozen=True, tag="idem.v1"):
    """A remembered command: the event it caused (which gives its fingerprint) and the
    result it returned."""

    key: str
    event: Event
    result: Result


class CalendarSnapshot(_Record, frozen=True, tag="calendar_snapshot.v1"):
    """A calendar's full state; with the events after it, it rebuilds the calendar."""

    provider_id: str
    service: str
    start: int
    slot_seconds: int
    capacity: bytes
    booked: bytes
    held: bytes
    holds: list[Hold]
    bookings: list[Booking]
    expired_holds: list[ExpiredHold]
    idempotency: list[IdempotencyEntry]
    # Slots whose capacity was set below what was taken: (slot index, target capacity).
    capacity_targets: list[tuple[int, int]] = []
    schedule: CalendarSchedule | None = None


Record = Command | Event | CalendarSnapshot | Hold | Booking
