"""The calendar against a reference model, over random command sequences.

After every step: no slot has booked + held > capacity; the calendar's slots, holds and
bookings equal the model's; every booking in the journal was confirmed before its hold
expired; and the last snapshot plus the events journaled since (through the msgpack
codec) rebuilds exactly the live state. The default run is at least 10,000 steps
(``make soak``: 200,000).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine import codec, errors
from engine.calendar import Calendar
from engine.records import (
    Booking,
    CancelBooking,
    ConfirmHold,
    Event,
    ExpireHolds,
    Hold,
    HoldConfirmed,
    HoldPlaced,
    MarkAttendance,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
    RollCalendar,
    SetCapacity,
)
from tests.engine.reference_model import CalendarModel

SLOT = 900
START = 1_800_000_000 - 1_800_000_000 % SLOT
# Mostly the latest ids (the interesting races are about them), sometimes any older one.
PICK = st.one_of(st.sampled_from([-1, -1, -2]), st.integers(0, 1000))
# Key modes: no key, a fresh key, or a key used before (maybe for another command).
KEYS = st.sampled_from(["none", "fresh", "fresh", "reuse"])
N_SLOTS = 6
# Mostly real slots; -1 is an unaligned start, N_SLOTS one past the grid.
SLOTS = st.sampled_from([*range(N_SLOTS)] * 3 + [-1, N_SLOTS])
EXAMPLES = int(os.environ.get("HEXBOOK_STATEFUL_EXAMPLES", "400"))
STEPS_PER_EXAMPLE = 50
MIN_TOTAL_STEPS = int(os.environ.get("HEXBOOK_STATEFUL_MIN_STEPS", "10000"))

steps_run = 0


def pick_from(ids: list[str], pick: int) -> str:
    return ids[pick] if pick < 0 and -pick <= len(ids) else ids[pick % len(ids)]


def as_tuple(result: Hold | Booking | None) -> tuple[object, ...] | None:
    if isinstance(result, Hold):
        return ("hold", result.hold_id, result.start, result.party_size, result.expires_at)
    if isinstance(result, Booking):
        return (
            "booking",
            result.booking_id,
            result.start,
            result.party_size,
            result.patient_ref,
            result.hold_id,
            result.created_at,
            result.status,
            result.attendance,
        )
    return None


class CalendarMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START - 3600
        self.counter = 0
        self.hold_ids: list[str] = ["never-issued"]  # holds that were placed
        self.booking_ids: list[str] = ["never-booked"]  # bookings that were made
        self.keys: list[str] = ["k0"]
        self.journal: list[Event] = []
        self.last: tuple[str, Any, Any] | None = None  # the last command, to repeat it

    @initialize(capacity=st.lists(st.integers(0, 3), min_size=N_SLOTS, max_size=N_SLOTS))
    def setup(self, capacity: list[int]) -> None:
        self.cal = Calendar("p1", "vaccine", START, SLOT, np.array(capacity, dtype=np.uint16))
        self.model = CalendarModel(START, SLOT, list(capacity))
        self.snapshot = codec.encode(self.cal.snapshot())
        self.since_snapshot: list[bytes] = []

    # --- helpers ---------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def key(self, mode: str, pick: int) -> str | None:
        if mode == "none":
            return None
        if mode == "reuse":
            return pick_from(self.keys, pick)
        self.keys.append(self.fresh("k"))
        return self.keys[-1]

    def start_of(self, slot: int) -> int:
        # Counted from the window's current start (rolls move it); -1 gives an unaligned
        # start, N_SLOTS the first slot past the end.
        if slot == -1:
            return self.model.start + SLOT // 2
        if slot == N_SLOTS:
            return self.model.end
        return self.model.start + slot * SLOT

    def run(self, name: str, command: Any, model_call: Any) -> None:
        global steps_run
        steps_run += 1
        self.last = (name, command, model_call)
        try:
            expected: tuple[object, ...] | None = model_call()
            expected_error = None
        except errors.HexbookError as exc:
            expected, expected_error = None, type(exc)
        try:
            result = self.cal.handle(command)
            got, got_error = as_tuple(result), None
            if isinstance(result, Hold) and result.hold_id not in self.hold_ids:
                self.hold_ids.append(result.hold_id)
            if isinstance(result, Booking) and result.booking_id not in self.booking_ids:
                self.booking_ids.append(result.booking_id)
        except errors.HexbookError as exc:
            got, got_error = None, type(exc)
        finally:
            events = self.cal.drain()
            self.journal.extend(events)
            if events:
                self.since_snapshot.append(codec.encode(events))
        assert got_error is expected_error, (name, got_error, expected_error)
        assert got == expected, (name, got, expected)

    # --- rules -----------------------------------------------------------------------
    @rule(dt=st.sampled_from([0, 1, 30, 120, 299, 300, 301, 900, 3600]), sweep=st.booleans())
    def advance(self, dt: int, sweep: bool) -> None:
        """Time passes; maybe the periodic sweep runs."""
        self.now += dt
        if sweep:
            now = self.now
            self.run("sweep", ExpireHolds("p1", "vaccine", now), lambda: self.model.sweep(now))

    @rule(
        mode=KEYS,
        kpick=PICK,
        slot=SLOTS,
        party=st.sampled_from([1, 1, 1, 2, 3, 0]),
        ttl=st.sampled_from([1, 60, 300, 300]),
        reuse=st.sampled_from([False] * 19 + [True]),
    )
    def hold(self, mode: str, kpick: int, slot: int, party: int, ttl: int, reuse: bool) -> None:
        key = self.key(mode, kpick)
        hold_id = self.hold_ids[-1] if reuse else self.fresh("h")
        start, now = self.start_of(slot), self.now
        cmd = PlaceHold("p1", "vaccine", key, now, hold_id, start, party, ttl)
        self.run("hold", cmd, lambda: self.model.hold(key, now, hold_id, start, party, ttl))

    @rule(
        mode=KEYS,
        slot=SLOTS,
        party=st.sampled_from([1, 1, 2]),
        ttl=st.sampled_from([1, 60, 300]),
        wait=st.sampled_from([0, 1, 59, 60, 61, 299, 300]),
    )
    def book(self, mode: str, slot: int, party: int, ttl: int, wait: int) -> None:
        """The usual flow: hold a slot, take some time, confirm (maybe too late)."""
        self.hold(mode, -1, slot, party, ttl, False)
        self.now += wait
        self.confirm(mode, -1, -1, "r1")

    @rule(mode=KEYS, kpick=PICK, pick=PICK, ref=st.sampled_from(["r1", "r2"]))
    def confirm(self, mode: str, kpick: int, pick: int, ref: str) -> None:
        key = self.key(mode, kpick)
        hold_id = pick_from(self.hold_ids, pick)
        booking_id, now = self.fresh("b"), self.now
        cmd = ConfirmHold("p1", "vaccine", key, now, hold_id, booking_id, b"digest", ref)
        self.run("confirm", cmd, lambda: self.model.confirm(key, now, hold_id, booking_id, ref))

    @rule(mode=KEYS, kpick=PICK, pick=PICK)
    def release(self, mode: str, kpick: int, pick: int) -> None:
        key = self.key(mode, kpick)
        hold_id, now = pick_from(self.hold_ids, pick), self.now
        cmd = ReleaseHold("p1", "vaccine", key, now, hold_id)
        self.run("release", cmd, lambda: self.model.release(key, now, hold_id))

    @rule(mode=KEYS, kpick=PICK, pick=PICK)
    def cancel(self, mode: str, kpick: int, pick: int) -> None:
        key = self.key(mode, kpick)
        booking_id, now = pick_from(self.booking_ids, pick), self.now
        cmd = CancelBooking("p1", "vaccine", key, now, booking_id)
        self.run("cancel", cmd, lambda: self.model.cancel(key, now, booking_id))

    @rule(mode=KEYS, kpick=PICK, pick=PICK, came=st.sampled_from(["attended", "no_show"]))
    def mark(self, mode: str, kpick: int, pick: int, came: Literal["attended", "no_show"]) -> None:
        key = self.key(mode, kpick)
        booking_id, now = pick_from(self.booking_ids, pick), self.now
        cmd = MarkAttendance("p1", "vaccine", key, now, booking_id, came)
        self.run("mark", cmd, lambda: self.model.mark(key, now, booking_id, came))

    @rule(mode=KEYS, kpick=PICK, pick=PICK, slot=SLOTS)
    def reschedule(self, mode: str, kpick: int, pick: int, slot: int) -> None:
        key = self.key(mode, kpick)
        booking_id, now = pick_from(self.booking_ids, pick), self.now
        new_start = self.start_of(slot)
        cmd = RescheduleBooking("p1", "vaccine", key, now, booking_id, new_start)
        self.run("reschedule", cmd, lambda: self.model.reschedule(key, now, booking_id, new_start))

    @rule(
        capacity=st.lists(st.integers(0, 3), min_size=16, max_size=16),
        short=st.booleans(),
    )
    def set_capacity(self, capacity: list[int], short: bool) -> None:
        """A re-import sets every slot's capacity, maybe below what is taken."""
        n = len(self.model.capacity)
        wanted = capacity[: max(n - 1, 0)] if short else capacity[:n]
        data = np.array(wanted, dtype=np.uint16).tobytes()
        self.run(
            "set_capacity",
            SetCapacity("p1", "vaccine", None, self.now, data),
            lambda: self.model.set_capacity(self.now, wanted),
        )

    @rule(
        cut=st.integers(0, 3),
        add=st.integers(0, 3),
        added=st.lists(st.integers(0, 3), min_size=3, max_size=3),
        forget=st.sampled_from([0, 60, 600, 3600, 10**6]),
        off_grid=st.sampled_from([False] * 9 + [True]),
    )
    def roll(self, cut: int, add: int, added: list[int], forget: int, off_grid: bool) -> None:
        """Days pass: the window moves on (earlier slots leave, new ones come), and
        memories older than ``forget`` seconds are dropped."""
        start = self.model.start + cut * SLOT + (SLOT // 2 if off_grid else 0)
        end, new, now = self.model.end + add * SLOT, added[:add], self.now
        data = np.array(new, dtype=np.uint16).tobytes()
        cmd = RollCalendar("p1", "vaccine", now, start, end, data, now - forget)
        self.run("roll", cmd, lambda: self.model.roll(now, start, end, new, now - forget))

    @precondition(lambda self: self.last is not None)
    @rule(later=st.sampled_from([0, 1, 60]))
    def repeat_last(self, later: int) -> None:
        """A client retrying after a timeout: the same command again, a bit later."""
        assert self.last is not None
        name, command, _ = self.last
        self.now += later
        if name in ("sweep", "roll") or getattr(command, "key", None) is None:
            return
        fields = {f: getattr(command, f) for f in command.__struct_fields__}
        fields["now"] = self.now
        if name == "hold":
            # The retry comes with a newly generated id (a retry cannot know the first),
            # which must not matter: the key decides.
            fields["hold_id"] = self.fresh("h")
        if name == "confirm":
            fields["booking_id"] = self.fresh("b")
        retry = type(command)(**fields)
        model_args = {
            "hold": ("hold_id", "start", "party_size", "ttl"),
            "confirm": ("hold_id", "booking_id", "patient_ref"),
            "release": ("hold_id",),
            "cancel": ("booking_id",),
            "reschedule": ("booking_id", "new_start"),
            "mark": ("booking_id", "attendance"),
        }[name]
        args = [fields[a] for a in model_args]
        method = getattr(self.model, name)
        self.run(name, retry, lambda: method(fields["key"], fields["now"], *args))

    @rule(restore=st.sampled_from(["no", "snapshot", "replay"]))
    def take_snapshot(self, restore: str) -> None:
        """Snapshot (through the codec); maybe carry on with a rebuilt copy: from the new
        snapshot, or from the previous one plus a bulk replay of the journal since."""
        if restore == "replay":
            rebuilt = Calendar.from_snapshot(codec.decode_snapshot(self.snapshot))
            for entry in self.since_snapshot:
                rebuilt.replay(codec.decode_events(entry))
            self.cal = rebuilt
        self.snapshot = codec.encode(self.cal.snapshot())
        self.since_snapshot = []
        if restore == "snapshot":
            self.cal = Calendar.from_snapshot(codec.decode_snapshot(self.snapshot))

    # --- invariants ------------------------------------------------------------------
    @invariant()
    def never_overbooked(self) -> None:
        used = self.cal.booked.astype(int) + self.cal.held.astype(int)
        assert (used <= self.cal.capacity.astype(int)).all(), "booked + held > capacity"

    @invariant()
    def set_below_taken_shows_no_free_place(self) -> None:
        targets = self.cal.capacity_targets()
        assert targets == self.model.targets
        for i, target in targets.items():
            taken = int(self.cal.booked[i]) + int(self.cal.held[i])
            assert taken > target and int(self.cal.capacity[i]) == taken

    @invariant()
    def equals_model(self) -> None:
        assert self.cal.capacity.tolist() == self.model.capacity
        assert self.cal.booked.tolist() == self.model.booked
        assert self.cal.held.tolist() == self.model.held
        assert {h: (x.start, x.party_size, x.expires_at) for h, x in self.cal.holds.items()} == {
            h: (self.model.start + x.slot * SLOT, x.party, x.expires_at)
            for h, x in self.model.holds.items()
        }
        assert {b: as_tuple(x) for b, x in self.cal.bookings.items()} == {
            b: self.model.booking_result(x) for b, x in self.model.bookings.items()
        }

    @invariant()
    def no_expired_hold_confirmed(self) -> None:
        placed = {e.hold_id: e.at + e.ttl for e in self.journal if isinstance(e, HoldPlaced)}
        for e in self.journal:
            if isinstance(e, HoldConfirmed):
                assert e.at < placed[e.hold_id], f"hold {e.hold_id} confirmed after expiry"

    @invariant()
    def snapshot_plus_replay_equals_state(self) -> None:
        if not hasattr(self, "cal"):
            return
        rebuilt = Calendar.from_snapshot(codec.decode_snapshot(self.snapshot))
        for i, entry in enumerate(self.since_snapshot):
            events = codec.decode_events(entry)
            if i % 2:
                rebuilt.replay(events)  # the shard's bulk path...
            else:
                for event in events:  # ...and one event at a time
                    rebuilt.apply(event)
        assert codec.encode(rebuilt.snapshot()) == codec.encode(self.cal.snapshot())


def test_calendar_matches_model_and_replays() -> None:
    global steps_run
    steps_run = 0
    run_state_machine_as_test(
        CalendarMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert steps_run >= MIN_TOTAL_STEPS, f"only {steps_run} steps ran"
