"""A plain, slow, obviously-correct model of one calendar, to check the real one against.

Written from the rules, not from engine/calendar.py: dicts of ints, no numpy, no events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine import errors

Fingerprint = tuple[object, ...]


@dataclass
class ModelHold:
    hold_id: str
    slot: int
    party: int
    expires_at: int


@dataclass
class ModelBooking:
    booking_id: str
    slot: int
    party: int
    patient_ref: str
    hold_id: str
    created_at: int
    status: str = "active"
    attendance: str | None = None


@dataclass
class CalendarModel:
    start: int
    slot_seconds: int
    capacity: list[int]
    booked: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    bookings: dict[str, ModelBooking] = field(default_factory=dict)
    # key -> (fingerprint, first result, when the command came)
    remembered: dict[str, tuple[Fingerprint, tuple[object, ...], int]] = field(default_factory=dict)
    targets: dict[int, int] = field(default_factory=dict)  # slots set below what was taken

    def __post_init__(self) -> None:
        self.booked = [0] * len(self.capacity)
        self.held = [0] * len(self.capacity)

    # Results are plain tuples so they can be compared with the engine's records.
    @staticmethod
    def hold_result(h: ModelHold, start: int) -> tuple[object, ...]:
        return ("hold", h.hold_id, start, h.party, h.expires_at)

    def booking_result(self, b: ModelBooking) -> tuple[object, ...]:
        return (
            "booking",
            b.booking_id,
            self.start + b.slot * self.slot_seconds,
            b.party,
            b.patient_ref,
            b.hold_id,
            b.created_at,
            b.status,
            b.attendance,
        )

    def _expire(self, now: int) -> None:
        for hold_id, h in sorted(self.holds.items(), key=lambda kv: kv[1].expires_at):
            if h.expires_at <= now:
                self.held[h.slot] -= h.party
                self._give_back(h.slot)
                del self.holds[hold_id]
                self.expired[hold_id] = h.expires_at

    def _repeat(self, key: str | None, fp: Fingerprint) -> tuple[object, ...] | None:
        if key is None or key not in self.remembered:
            return None
        first_fp, result, _ = self.remembered[key]
        if first_fp != fp:
            raise errors.IdempotencyConflict(key)
        return result

    def _remember(
        self, key: str | None, fp: Fingerprint, result: tuple[object, ...], now: int
    ) -> None:
        if key is not None:
            self.remembered[key] = (fp, result, now)

    def _give_back(self, i: int) -> None:
        """Places of slot i were given back: a slot set below what was taken falls."""
        if i in self.targets:
            taken = self.booked[i] + self.held[i]
            self.capacity[i] = max(self.targets[i], taken)
            if taken <= self.targets[i]:
                del self.targets[i]

    def set_capacity(self, now: int, capacity: list[int]) -> None:
        self._expire(now)
        if len(capacity) != len(self.capacity):
            raise errors.InvalidRequest("wrong number of slots")
        self.targets = {}
        for i, wanted in enumerate(capacity):
            taken = self.booked[i] + self.held[i]
            self.capacity[i] = max(wanted, taken)
            if taken > wanted:
                self.targets[i] = wanted

    def _slot(self, start: int) -> int:
        i, rest = divmod(start - self.start, self.slot_seconds)
        if rest or not 0 <= i < len(self.capacity):
            raise errors.InvalidRequest("not a slot")
        return i

    def _free(self, i: int) -> int:
        return self.capacity[i] - self.booked[i] - self.held[i]

    def hold(
        self, key: str | None, now: int, hold_id: str, start: int, party: int, ttl: int
    ) -> tuple[object, ...]:
        self._expire(now)
        fp = ("hold", start, party, ttl)
        if (r := self._repeat(key, fp)) is not None:
            return r
        if party < 1 or ttl < 1:
            raise errors.InvalidRequest("bad party or ttl")
        if not hold_id or hold_id in self.holds or hold_id in self.expired:
            raise errors.InvalidRequest("hold id used")
        i = self._slot(start)
        if party > self._free(i):
            raise errors.SlotUnavailable("p", "s", start, party, self._free(i))
        h = ModelHold(hold_id, i, party, now + ttl)
        self.holds[hold_id] = h
        self.held[i] += party
        result = self.hold_result(h, start)
        self._remember(key, fp, result, now)
        return result

    def confirm(
        self, key: str | None, now: int, hold_id: str, booking_id: str, patient_ref: str
    ) -> tuple[object, ...]:
        self._expire(now)
        fp = ("confirm", hold_id, patient_ref)
        if (r := self._repeat(key, fp)) is not None:
            return r
        if hold_id not in self.holds:
            if hold_id in self.expired:
                raise errors.HoldExpired(hold_id, self.expired[hold_id])
            raise errors.HoldNotFound(hold_id)
        if not booking_id or booking_id in self.bookings:
            raise errors.InvalidRequest("booking id used")
        h = self.holds.pop(hold_id)
        assert h.expires_at > now, "the model itself confirmed an expired hold"
        self.held[h.slot] -= h.party
        self.booked[h.slot] += h.party
        b = ModelBooking(booking_id, h.slot, h.party, patient_ref, hold_id, now)
        self.bookings[booking_id] = b
        result = self.booking_result(b)
        self._remember(key, fp, result, now)
        return result

    def release(self, key: str | None, now: int, hold_id: str) -> tuple[object, ...]:
        self._expire(now)
        fp = ("release", hold_id)
        if (r := self._repeat(key, fp)) is not None:
            return r
        if hold_id not in self.holds:
            if hold_id in self.expired:
                raise errors.HoldExpired(hold_id, self.expired[hold_id])
            raise errors.HoldNotFound(hold_id)
        h = self.holds.pop(hold_id)
        self.held[h.slot] -= h.party
        self._give_back(h.slot)
        result = self.hold_result(h, self.start + h.slot * self.slot_seconds)
        self._remember(key, fp, result, now)
        return result

    def _active(self, booking_id: str) -> ModelBooking:
        if booking_id not in self.bookings:
            raise errors.BookingNotFound(booking_id)
        b = self.bookings[booking_id]
        if b.status != "active":
            raise errors.BookingNotActive(booking_id)
        return b

    def cancel(self, key: str | None, now: int, booking_id: str) -> tuple[object, ...]:
        self._expire(now)
        fp = ("cancel", booking_id)
        if (r := self._repeat(key, fp)) is not None:
            return r
        b = self._active(booking_id)
        b.status = "cancelled"
        self.booked[b.slot] -= b.party
        self._give_back(b.slot)
        result = self.booking_result(b)
        self._remember(key, fp, result, now)
        return result

    def mark(
        self, key: str | None, now: int, booking_id: str, attendance: str
    ) -> tuple[object, ...]:
        """Whether the patient came: an active booking whose slot has started."""
        self._expire(now)
        fp = ("attendance", booking_id, attendance)
        if (r := self._repeat(key, fp)) is not None:
            return r
        b = self._active(booking_id)
        if self.start + b.slot * self.slot_seconds > now:
            raise errors.InvalidRequest("not started")
        b.attendance = attendance
        result = self.booking_result(b)
        self._remember(key, fp, result, now)
        return result

    def reschedule(
        self, key: str | None, now: int, booking_id: str, new_start: int
    ) -> tuple[object, ...]:
        self._expire(now)
        fp = ("reschedule", booking_id, new_start)
        if (r := self._repeat(key, fp)) is not None:
            return r
        b = self._active(booking_id)
        if new_start == self.start + b.slot * self.slot_seconds:
            raise errors.InvalidRequest("same slot")
        j = self._slot(new_start)
        if b.party > self._free(j):
            raise errors.SlotUnavailable("p", "s", new_start, b.party, self._free(j))
        self.booked[j] += b.party
        self.booked[b.slot] -= b.party
        self._give_back(b.slot)
        b.slot = j
        result = self.booking_result(b)
        self._remember(key, fp, result, now)
        return result

    def sweep(self, now: int) -> None:
        self._expire(now)

    @property
    def end(self) -> int:
        return self.start + len(self.capacity) * self.slot_seconds

    def roll(self, now: int, start: int, end: int, added: list[int], forget_before: int) -> None:
        """The window moves to [start, end): earlier slots leave with their bookings (a
        hold on one expires now), new slots get ``added``, old memories are forgotten."""
        self._expire(now)
        step = self.slot_seconds
        if (
            (start - self.start) % step
            or (end - self.end) % step
            or start < self.start
            or end < self.end
            or start > end
        ):
            raise errors.InvalidRequest("not a roll of this grid")
        if len(added) != (end - self.end) // step:
            raise errors.InvalidRequest("wrong number of new slots")
        cut = (start - self.start) // step
        for hold_id, h in list(self.holds.items()):
            if h.slot < cut:
                self.held[h.slot] -= h.party
                self._give_back(h.slot)
                del self.holds[hold_id]
                self.expired[hold_id] = now
        for booking_id, b in list(self.bookings.items()):
            if b.slot < cut:
                del self.bookings[booking_id]
        self.capacity = (self.capacity + added)[cut:]
        self.booked = (self.booked + [0] * len(added))[cut:]
        self.held = (self.held + [0] * len(added))[cut:]
        for h in self.holds.values():
            h.slot -= cut
        for b in self.bookings.values():
            b.slot -= cut
        self.targets = {i - cut: t for i, t in self.targets.items() if i >= cut}
        self.start = start
        self.remembered = {k: v for k, v in self.remembered.items() if v[2] >= forget_before}
        self.expired = {h: at for h, at in self.expired.items() if at >= forget_before}
