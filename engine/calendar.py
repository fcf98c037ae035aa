"""A provider's calendar for one service: a slot grid plus its holds and bookings.

Slots live in numpy arrays (``capacity``, ``booked``, ``held``, uint16) so search can
scan them vectorized; the single-command hot path reads and writes them through
memoryviews of the same memory, which costs a few nanoseconds instead of numpy's
scalar boxing.

Every command is *decided* against the current state (validate, check capacity) and
turned into events; every event is then *evolved* into the state. Replay runs only the
evolve half, so ``snapshot + journal`` reproduces the live state by construction, and the
tests check that it does. Emitted events collect in :attr:`Calendar.outbox`, which the
owner (a shard actor) drains and journals; events are emitted even when a command then
fails (holds that expired on access), so always drain the outbox.

>>> from engine.records import PlaceHold, ConfirmHold
>>> cal = Calendar("p1", "vaccine", start=0, slot_seconds=900,
...                capacity=np.array([2, 2], dtype=np.uint16))
>>> hold = cal.handle(PlaceHold("p1", "vaccine", "k1", 10, "h1", 900, 1, 300))
>>> cal.handle(ConfirmHold("p1", "vaccine", "k2", 20, "h1", "b1", b"", "ref")).start
900
>>> cal.remaining().tolist(), len(cal.drain())
([2, 1], 2)
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np

from engine.eligibility import Attestation, Rule, refusals, rule_name
from engine.errors import (
    BookingNotActive,
    BookingNotFound,
    HoldExpired,
    HoldNotFound,
    IdempotencyConflict,
    InvalidRequest,
    NotEligible,
    SlotUnavailable,
)
from engine.records import (
    AttendanceMarked,
    Booking,
    BookingCancelled,
    BookingRescheduled,
    CalendarRolled,
    CalendarSchedule,
    CalendarSnapshot,
    CancelBooking,
    CapacityChanged,
    Command,
    ConfirmHold,
    ErasePatientData,
    Event,
    ExpiredHold,
    ExpireHolds,
    Hold,
    HoldConfirmed,
    HoldPlaced,
    HoldReleased,
    IdempotencyEntry,
    MarkAttendance,
    PatientDataErased,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
    Result,
    RollCalendar,
    SetCapacity,
)
from engine.schedule import CAPACITY_MAX, WeeklyTemplate, build_grid

__all__ = ["Calendar"]

_replace = msgspec.structs.replace


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


class Calendar:
    """Slots, holds and bookings of one provider for one service. Not thread-safe:
    a calendar has exactly one writer (its shard), which applies one command at a time."""

    __slots__ = (
        "_bk",
        "_cap",
        "_expired",
        "_expiry",
        "_grid",
        "_hd",
        "_idem",
        "_targets",
        "bookings",
        "holds",
        "n_slots",
        "outbox",
        "provider_id",
        "schedule",
        "service",
        "slot_seconds",
        "start",
    )

    def __init__(
        self,
        provider_id: str,
        service: str,
        start: int,
        slot_seconds: int,
        capacity: np.ndarray,
        schedule: CalendarSchedule | None = None,
    ) -> None:
        if slot_seconds <= 0:
            raise InvalidRequest(f"slot length {slot_seconds} s must be positive")
        if capacity.ndim != 1:
            raise InvalidRequest("capacity must be one value per slot")
        if capacity.size and (capacity.min() < 0 or capacity.max() > CAPACITY_MAX):
            raise InvalidRequest(f"capacity per slot must be 0 to {CAPACITY_MAX}")
        self.provider_id = provider_id
        self.service = service
        self.start = start
        self.slot_seconds = slot_seconds
        self.n_slots = int(capacity.size)
        # One block of memory for the three rows: fewer objects, better locality.
        self._grid = np.zeros((3, self.n_slots), dtype=np.uint16)
        self._grid[0] = capacity
        self._cap = memoryview(self._grid[0])
        self._bk = memoryview(self._grid[1])
        self._hd = memoryview(self._grid[2])
        self.holds: dict[str, Hold] = {}
        self.bookings: dict[str, Booking] = {}
        self._expired: dict[str, ExpiredHold] = {}
        self._idem: dict[str, IdempotencyEntry] = {}
        self._expiry: list[Hold] = []  # a heap, earliest expiry first; may hold stale ones
        # Slots whose capacity was set below what was taken: slot index -> target.
        self._targets: dict[int, int] = {}
        self.outbox: list[Event] = []
        # Zone, slot length and (for a template's calendar) the rolling horizon.
        self.schedule = schedule

    # --- construction ----------------------------------------------------------------

    @classmethod
    def from_template(
        cls,
        provider_id: str,
        service: str,
        tz_name: str,
        template: WeeklyTemplate,
        first_day: date,
        days: int = 14,
        slot_minutes: int = 15,
        horizon_days: int = 0,
    ) -> Calendar:
        """A calendar of ``days`` local days from ``first_day``, opened per ``template``;
        with ``horizon_days``, :func:`engine.horizon.plan_roll` keeps that many local
        days ahead open as days pass."""
        grid = build_grid(tz_name, template, first_day, days, slot_minutes)
        schedule = CalendarSchedule(tz_name, slot_minutes, template, horizon_days)
        return cls(provider_id, service, grid.start, grid.slot_seconds, grid.capacity, schedule)

    @classmethod
    def from_snapshot(cls, snap: CalendarSnapshot) -> Calendar:
        """Rebuild a calendar from :meth:`snapshot`."""
        cal = cls(
            snap.provider_id,
            snap.service,
            snap.start,
            snap.slot_seconds,
            np.frombuffer(snap.capacity, dtype=np.uint16),
            snap.schedule,
        )
        cal._grid[1] = np.frombuffer(snap.booked, dtype=np.uint16)
        cal._grid[2] = np.frombuffer(snap.held, dtype=np.uint16)
        for hold in snap.holds:
            cal.holds[hold.hold_id] = hold
        cal._expiry = sorted(snap.holds)
        cal.bookings = {b.booking_id: b for b in snap.bookings}
        cal._expired = {e.hold_id: e for e in snap.expired_holds}
        cal._idem = {e.key: e for e in snap.idempotency}
        cal._targets = dict(snap.capacity_targets)
        return cal

    def snapshot(self) -> CalendarSnapshot:
        """The full state, for storage; events after it are replayed with :meth:`apply`."""
        return CalendarSnapshot(
            provider_id=self.provider_id,
            service=self.service,
            start=self.start,
            slot_seconds=self.slot_seconds,
            capacity=self._grid[0].tobytes(),
            booked=self._grid[1].tobytes(),
            held=self._grid[2].tobytes(),
            holds=list(self.holds.values()),
            bookings=list(self.bookings.values()),
            expired_holds=list(self._expired.values()),
            idempotency=list(self._idem.values()),
            capacity_targets=sorted(self._targets.items()),
            schedule=self.schedule,
        )

    # --- reading -------------------------------------------------------------------------

    @property
    def capacity(self) -> np.ndarray:
        """Places per slot (read-only view)."""
        return _readonly(self._grid[0])

    @property
    def booked(self) -> np.ndarray:
        """Places booked per slot (read-only view)."""
        return _readonly(self._grid[1])

    @property
    def held(self) -> np.ndarray:
        """Places held per slot (read-only view)."""
        return _readonly(self._grid[2])

    @property
    def end(self) -> int:
        """UTC second just after the last slot."""
        return self.start + self.n_slots * self.slot_seconds

    def starts(self) -> np.ndarray:
        """UTC start of every slot."""
        return self.start + np.arange(self.n_slots, dtype=np.int64) * self.slot_seconds

    def remaining(self) -> np.ndarray:
        """Free places per slot (capacity - booked - held), never negative."""
        g = self._grid.astype(np.int32)
        free: np.ndarray = np.maximum(g[0] - g[1] - g[2], 0)
        return free

    def remaining_at(self, start: int) -> int:
        """Free places in the slot starting at ``start``."""
        i = self.slot_index(start)
        return max(self._cap[i] - self._bk[i] - self._hd[i], 0)

    def slot_index(self, start: int) -> int:
        """Index of the slot that starts at ``start``, or :class:`InvalidRequest`."""
        i, rest = divmod(start - self.start, self.slot_seconds)
        if rest or not 0 <= i < self.n_slots:
            raise InvalidRequest(
                f"{start} is not a slot start of provider {self.provider_id!r} "
                f"({self.service}): slots are every {self.slot_seconds // 60} min "
                f"from {self.start} to {self.end}"
            )
        return i

    def capacity_targets(self) -> dict[int, int]:
        """Slots set below what was taken (slot index -> the capacity asked for); each
        falls to its target as places are given back."""
        return dict(self._targets)

    def expired_at(self, hold_id: str) -> int | None:
        """When the hold ``hold_id`` expired, if it expired here."""
        e = self._expired.get(hold_id)
        return None if e is None else e.at

    def drain(self) -> list[Event]:
        """Take the events emitted since the last drain (to journal them)."""
        events, self.outbox = self.outbox, []
        return events

    # --- commands ------------------------------------------------------------------------

    def handle(self, command: Command) -> Result | None:
        """Apply one command; return its result (``None`` for :class:`ExpireHolds`)."""
        return _DECIDE[type(command)](self, command)

    def expire(self, now: int) -> int:
        """Release every hold due at or before ``now``; return how many expired."""
        heap, holds, count = self._expiry, self.holds, 0
        while heap and heap[0].expires_at <= now:
            hold = heapq.heappop(heap)
            # Holds confirmed or released meanwhile are stale entries: skip them.
            if holds.get(hold.hold_id) is hold:
                self._emit(HoldReleased(hold.hold_id, hold.start, "expired", hold.expires_at, None))
                count += 1
        return count

    @staticmethod
    def _repeat(remembered: IdempotencyEntry, cmd: Command) -> Result:
        """A command repeated under its key: the first result, if it is the same command.

        ``cmd.key`` may be ``None``; ``None`` is never a key in the table, so the lookup
        before this call simply misses."""
        if remembered.event.fingerprint() != cmd.fingerprint():  # type: ignore[union-attr]
            raise IdempotencyConflict(remembered.key)
        return remembered.result

    def _place_hold(self, cmd: PlaceHold) -> Result:
        if self._expiry and self._expiry[0].expires_at <= cmd.now:
            self.expire(cmd.now)
        remembered = self._idem.get(cmd.key)  # type: ignore[arg-type]
        if remembered is not None:
            return self._repeat(remembered, cmd)
        party = cmd.party_size
        if not 1 <= party <= CAPACITY_MAX or cmd.ttl < 1:
            raise InvalidRequest(
                f"party size {party} must be at least 1 and hold ttl {cmd.ttl} s positive"
            )
        hold_id = cmd.hold_id
        if not hold_id or hold_id in self.holds or hold_id in self._expired:
            raise InvalidRequest("hold id is empty or already used; generate a new one")
        i, rest = divmod(cmd.start - self.start, self.slot_seconds)
        if rest or not 0 <= i < self.n_slots:
            i = self.slot_index(cmd.start)  # raises with the explanation
        free = self._cap[i] - self._bk[i] - self._hd[i]
        if party > free:
            raise SlotUnavailable(self.provider_id, self.service, cmd.start, party, max(free, 0))
        if cmd.rule is not None:
            self._check_rule(cmd.rule, cmd.attested, cmd.start)
        event = HoldPlaced(hold_id, cmd.start, party, cmd.now, cmd.ttl, cmd.key, cmd.attested)
        if cmd.offer is not None:
            event = _replace(event, offer=cmd.offer)
        self.outbox.append(event)
        return self._on_hold_placed(event)

    def _confirm(self, cmd: ConfirmHold) -> Result:
        if self._expiry and self._expiry[0].expires_at <= cmd.now:
            self.expire(cmd.now)
        remembered = self._idem.get(cmd.key)  # type: ignore[arg-type]
        if remembered is not None:
            return self._repeat(remembered, cmd)
        if cmd.hold_id not in self.holds:
            raise self._hold_gone(cmd.hold_id)
        if not cmd.booking_id or cmd.booking_id in self.bookings:
            raise InvalidRequest("booking id is empty or already used; generate a new one")
        rule = cmd.rule
        if rule is None:
            event = HoldConfirmed(
                cmd.hold_id, cmd.booking_id, cmd.token_digest, cmd.patient_ref, cmd.now, cmd.key
            )
        else:
            hold = self.holds[cmd.hold_id]
            self._check_rule(rule, hold.attested, hold.start)
            event = HoldConfirmed(
                cmd.hold_id,
                cmd.booking_id,
                cmd.token_digest,
                cmd.patient_ref,
                cmd.now,
                cmd.key,
                rule_name(rule),
                rule.version,
            )
        if cmd.series_id is not None or cmd.contact is not None:
            event = _replace(event, series_id=cmd.series_id, contact=cmd.contact)
        self.outbox.append(event)
        return self._on_hold_confirmed(event)

    def _prologue(
        self, cmd: ReleaseHold | CancelBooking | RescheduleBooking | MarkAttendance
    ) -> Result | None:
        """Expire what is due, then the first result if this command is a repeat.
        (Place and confirm, the hot path, have this inlined.)"""
        if self._expiry and self._expiry[0].expires_at <= cmd.now:
            self.expire(cmd.now)
        remembered = self._idem.get(cmd.key)  # type: ignore[arg-type]
        return None if remembered is None else self._repeat(remembered, cmd)

    def _release(self, cmd: ReleaseHold) -> Result:
        if (prior := self._prologue(cmd)) is not None:
            return prior
        hold = self.holds.get(cmd.hold_id)
        if hold is None:
            raise self._hold_gone(cmd.hold_id)
        return self._emit(HoldReleased(cmd.hold_id, hold.start, "released", cmd.now, cmd.key))

    def _cancel(self, cmd: CancelBooking) -> Result:
        if (prior := self._prologue(cmd)) is not None:
            return prior
        self._active_booking(cmd.booking_id)
        return self._emit(BookingCancelled(cmd.booking_id, cmd.now, cmd.key))

    def _mark(self, cmd: MarkAttendance) -> Result:
        if (prior := self._prologue(cmd)) is not None:
            return prior
        booking = self._active_booking(cmd.booking_id)
        if booking.start > cmd.now:
            raise InvalidRequest(
                f"booking {cmd.booking_id!r} has not started yet; mark whether the patient "
                "came once its slot has begun"
            )
        return self._emit(AttendanceMarked(cmd.booking_id, cmd.attendance, cmd.now, cmd.key))

    def _reschedule(self, cmd: RescheduleBooking) -> Result:
        if (prior := self._prologue(cmd)) is not None:
            return prior
        booking = self._active_booking(cmd.booking_id)
        if cmd.new_start == booking.start:
            raise InvalidRequest(f"booking {cmd.booking_id!r} is already at {cmd.new_start}")
        i = self.slot_index(cmd.new_start)
        free = self._cap[i] - self._bk[i] - self._hd[i]
        if booking.party_size > free:
            raise SlotUnavailable(
                self.provider_id, self.service, cmd.new_start, booking.party_size, max(free, 0)
            )
        return self._emit(
            BookingRescheduled(cmd.booking_id, booking.start, cmd.new_start, cmd.now, cmd.key)
        )

    def _set_capacity(self, cmd: SetCapacity) -> None:
        # A set is idempotent by nature: its key is not remembered.
        if self._expiry and self._expiry[0].expires_at <= cmd.now:
            self.expire(cmd.now)
        if len(cmd.capacity) != 2 * self.n_slots:
            raise InvalidRequest(
                f"capacity of {len(cmd.capacity) // 2} slots given for a calendar of "
                f"{self.n_slots} slots"
            )
        event = CapacityChanged(cmd.capacity, cmd.now, None)
        self.outbox.append(event)
        self._on_capacity_changed(event)

    def _expire_cmd(self, cmd: ExpireHolds) -> None:
        self.expire(cmd.now)

    def _roll(self, cmd: RollCalendar) -> None:
        if self._expiry and self._expiry[0].expires_at <= cmd.now:
            self.expire(cmd.now)
        step = self.slot_seconds
        added, rest = divmod(cmd.end - self.end, step)
        trimmed, off = divmod(cmd.start - self.start, step)
        if rest or off or added < 0 or trimmed < 0 or cmd.start > cmd.end:
            raise InvalidRequest(
                f"a roll of provider {self.provider_id!r} ({self.service}) must keep its "
                f"{step // 60}-minute grid, start at or after {self.start} and end at or "
                f"after {self.end}; got [{cmd.start}, {cmd.end})"
            )
        if len(cmd.capacity) != 2 * added:
            raise InvalidRequest(f"a roll adding {added} slots needs {added} capacities")
        for hold in [h for h in self.holds.values() if h.start < cmd.start]:
            # A hold on a slot that leaves cannot be confirmed any more: it expires now.
            self._emit(HoldReleased(hold.hold_id, hold.start, "expired", cmd.now, None))
        archived = [b for b in self.bookings.values() if b.start < cmd.start]
        event = CalendarRolled(
            cmd.start, cmd.end, cmd.capacity, cmd.forget_before, archived, cmd.now
        )
        self.outbox.append(event)
        self._on_calendar_rolled(event)

    def _erase(self, cmd: ErasePatientData) -> None:
        if (cmd.patient_ref is None) == (cmd.ended_by is None):
            raise InvalidRequest("an erasure names a patient reference or an end time, not both")
        step = self.slot_seconds
        if cmd.patient_ref is not None:
            ref = cmd.patient_ref
            ids = [b.booking_id for b in self.bookings.values() if b.patient_ref == ref]
        else:
            end = cmd.ended_by
            assert end is not None
            ids = [b.booking_id for b in self.bookings.values() if b.start + step <= end]
        ids = [i for i in ids if self.bookings[i].has_patient_data]
        if ids:
            reason: Literal["request", "retention"] = (
                "request" if cmd.patient_ref is not None else "retention"
            )
            self._emit(PatientDataErased(ids, reason, cmd.now))

    def local_day(self, start: int) -> date:
        """The provider's local day of the slot starting at ``start``."""
        zone = self.schedule.timezone if self.schedule is not None else "UTC"
        return datetime.fromtimestamp(start, _zone(zone)).date()

    @staticmethod
    def utc_day(start: int) -> date:
        return datetime.fromtimestamp(start, _zone("UTC")).date()

    def _check_rule(self, rule: Rule, attested: Attestation | None, start: int) -> None:
        reasons = refusals(rule, attested, self.local_day(start))
        if reasons:
            raise NotEligible(rule_name(rule), rule.version, reasons)

    def _hold_gone(self, hold_id: str) -> Exception:
        expired = self._expired.get(hold_id)
        if expired is not None:
            return HoldExpired(hold_id, expired.at)
        return HoldNotFound(hold_id)

    def _active_booking(self, booking_id: str) -> Booking:
        booking = self.bookings.get(booking_id)
        if booking is None:
            raise BookingNotFound(booking_id)
        if booking.status != "active":
            raise BookingNotActive(booking_id)
        return booking

    # --- events --------------------------------------------------------------------------

    def _emit(self, event: Event) -> Result:
        self.outbox.append(event)
        return _EVOLVE[type(event)](self, event)  # type: ignore[return-value]

    def apply(self, event: Event) -> Result | None:
        """Replay one journaled event (no checks, no outbox): the evolve half."""
        return _EVOLVE[type(event)](self, event)

    def replay(self, events: list[Event], *, rebuild_expiry: bool = True) -> None:
        """Replay journaled events in order, like :meth:`apply` for each.

        Holds placed here skip the expiry heap (nothing expires during a replay, and a
        heap that is never popped only grows); it is rebuilt from the live holds at the
        end, or by the caller with :meth:`rebuild_expiry` after many replays."""
        evolve = _EVOLVE
        place = Calendar._place
        for event in events:
            if type(event) is HoldPlaced:
                place(self, event)
            else:
                evolve[type(event)](self, event)
        if rebuild_expiry:
            self.rebuild_expiry()

    def rebuild_expiry(self) -> None:
        """Rebuild the expiry heap from the live holds (a sorted list is a heap)."""
        self._expiry = sorted(self.holds.values())

    def _remember(self, event: Event, result: Result) -> Result:
        if event.key is not None:
            self._idem[event.key] = IdempotencyEntry(event.key, event, result)
        return result

    def _on_hold_placed(self, ev: HoldPlaced) -> Result:
        hold = self._place(ev)
        heapq.heappush(self._expiry, hold)
        return hold

    def _place(self, ev: HoldPlaced) -> Hold:
        i = (ev.start - self.start) // self.slot_seconds
        self._hd[i] += ev.party_size
        hold = Hold(ev.at + ev.ttl, ev.hold_id, ev.start, ev.party_size, ev.attested, ev.offer)
        self.holds[ev.hold_id] = hold
        if ev.key is not None:
            self._idem[ev.key] = IdempotencyEntry(ev.key, ev, hold)
        return hold

    def _on_hold_confirmed(self, ev: HoldConfirmed) -> Result:
        hold = self.holds.pop(ev.hold_id)
        i = (hold.start - self.start) // self.slot_seconds
        self._hd[i] -= hold.party_size
        self._bk[i] += hold.party_size
        booking = Booking(
            ev.booking_id,
            hold.start,
            hold.party_size,
            ev.patient_ref,
            ev.token_digest,
            ev.hold_id,
            ev.at,
            "active",
            hold.attested,
            ev.rule,
            ev.rule_version,
            ev.series_id,
            ev.contact,
        )
        self.bookings[ev.booking_id] = booking
        if ev.key is not None:
            self._idem[ev.key] = IdempotencyEntry(ev.key, ev, booking)
        return booking

    def _on_patient_data_erased(self, ev: PatientDataErased) -> None:
        holds = set()
        for booking_id in ev.booking_ids:
            b = self.bookings.get(booking_id)
            if b is None:
                continue
            holds.add(b.hold_id)
            self.bookings[booking_id] = _replace(b, attested=None, contact=None, erased_at=ev.at)
        erased = set(ev.booking_ids)
        # Remembered results would show the data to a repeat of the request: forgotten.
        for key, entry in list(self._idem.items()):
            result, event = entry.result, entry.event
            if (isinstance(result, Booking) and result.booking_id in erased) or (
                isinstance(event, HoldPlaced) and event.hold_id in holds
            ):
                del self._idem[key]

    def _on_capacity_changed(self, ev: CapacityChanged) -> None:
        wanted = np.frombuffer(ev.capacity, dtype=np.uint16).astype(np.int32)
        taken = self._grid[1].astype(np.int32) + self._grid[2]
        self._grid[0] = np.maximum(wanted, taken)
        short = np.flatnonzero(taken > wanted)
        self._targets = {int(i): int(wanted[i]) for i in short}

    def _on_calendar_rolled(self, ev: CalendarRolled) -> None:
        step = self.slot_seconds
        trimmed = (ev.start - self.start) // step
        added = np.frombuffer(ev.capacity, dtype=np.uint16)
        grid = np.zeros((3, self.n_slots + added.size), dtype=np.uint16)
        grid[:, : self.n_slots] = self._grid
        grid[0, self.n_slots :] = added
        self._grid = np.ascontiguousarray(grid[:, trimmed:])
        self._cap = memoryview(self._grid[0])
        self._bk = memoryview(self._grid[1])
        self._hd = memoryview(self._grid[2])
        self.start, self.n_slots = ev.start, int(self._grid.shape[1])
        for b in ev.archived:
            self.bookings.pop(b.booking_id, None)
        self._targets = {i - trimmed: t for i, t in self._targets.items() if i >= trimmed}
        forget = ev.forget_before
        self._idem = {k: e for k, e in self._idem.items() if e.event.at >= forget}
        self._expired = {h: e for h, e in self._expired.items() if e.at >= forget}

    def _give_back(self, i: int) -> None:
        """A place of slot ``i`` was given back: a slot above its target falls toward it."""
        target = self._targets[i]
        taken = self._bk[i] + self._hd[i]
        self._cap[i] = max(target, taken)
        if taken <= target:
            del self._targets[i]

    def _on_hold_released(self, ev: HoldReleased) -> Result:
        hold = self.holds.pop(ev.hold_id)
        i = (hold.start - self.start) // self.slot_seconds
        self._hd[i] -= hold.party_size
        if self._targets and i in self._targets:
            self._give_back(i)
        if ev.reason == "expired":
            self._expired[ev.hold_id] = ExpiredHold(ev.hold_id, ev.at)
        return self._remember(ev, hold)

    def _on_booking_cancelled(self, ev: BookingCancelled) -> Result:
        booking = _replace(self.bookings[ev.booking_id], status="cancelled")
        i = (booking.start - self.start) // self.slot_seconds
        self._bk[i] -= booking.party_size
        if self._targets and i in self._targets:
            self._give_back(i)
        self.bookings[ev.booking_id] = booking
        return self._remember(ev, booking)

    def _on_attendance_marked(self, ev: AttendanceMarked) -> Result:
        booking = _replace(self.bookings[ev.booking_id], attendance=ev.attendance)
        self.bookings[ev.booking_id] = booking
        return self._remember(ev, booking)

    def _on_booking_rescheduled(self, ev: BookingRescheduled) -> Result:
        booking = _replace(self.bookings[ev.booking_id], start=ev.new_start)
        # Take the new place before giving the old one back: never a moment with neither.
        self._bk[(ev.new_start - self.start) // self.slot_seconds] += booking.party_size
        i = (ev.old_start - self.start) // self.slot_seconds
        self._bk[i] -= booking.party_size
        if self._targets and i in self._targets:
            self._give_back(i)
        self.bookings[ev.booking_id] = booking
        return self._remember(ev, booking)

    def __repr__(self) -> str:
        return (
            f"Calendar({self.provider_id!r}, {self.service!r}, slots={self.n_slots}, "
            f"holds={len(self.holds)}, bookings={len(self.bookings)})"
        )


def _readonly(view: np.ndarray) -> np.ndarray:
    out = view.view()
    out.flags.writeable = False
    return out


_DECIDE: dict[type, Callable[[Calendar, Any], Result | None]] = {
    PlaceHold: Calendar._place_hold,
    ConfirmHold: Calendar._confirm,
    ReleaseHold: Calendar._release,
    CancelBooking: Calendar._cancel,
    RescheduleBooking: Calendar._reschedule,
    MarkAttendance: Calendar._mark,
    ExpireHolds: Calendar._expire_cmd,
    SetCapacity: Calendar._set_capacity,
    RollCalendar: Calendar._roll,
    ErasePatientData: Calendar._erase,
}
_EVOLVE: dict[type, Callable[[Calendar, Any], Result | None]] = {
    HoldPlaced: Calendar._on_hold_placed,
    HoldConfirmed: Calendar._on_hold_confirmed,
    HoldReleased: Calendar._on_hold_released,
    BookingCancelled: Calendar._on_booking_cancelled,
    BookingRescheduled: Calendar._on_booking_rescheduled,
    AttendanceMarked: Calendar._on_attendance_marked,
    CapacityChanged: Calendar._on_capacity_changed,
    CalendarRolled: Calendar._on_calendar_rolled,
    PatientDataErased: Calendar._on_patient_data_erased,
}
