"""Dose series (engine/series.py): the protocol run against real calendars with answers
lost before and after each step, holds expiring and other patients taking places.
Whatever happens, a series that ends is whole (every dose booked) or absent (none)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.calendar import Calendar
from engine.errors import HexbookError, InvalidRequest, SlotUnavailable
from engine.records import (
    CancelBooking,
    ConfirmHold,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
)
from engine.schedule import WeeklyTemplate
from engine.series import (
    TERMINAL,
    Dose,
    SeriesRecord,
    SeriesTemplate,
    Step,
    advance,
    advance_all,
    dose_window,
    first_doses,
    next_step,
    next_steps,
    pick_slot,
    plan_move,
    request_cancel,
    request_confirm,
    request_move,
    validate_template,
)

TEMPLATE = WeeklyTemplate.uniform(("mon", "tue", "wed", "thu", "fri"), "09:00", "10:00", 2)
REFUSED = (HexbookError,)  # any domain refusal is a definite answer


def test_the_window_and_the_slot_picked_in_it() -> None:
    t = SeriesTemplate("vaccine", 21, 42)
    assert dose_window(t, 1000) == (1000 + 21 * 86400, 1000 + 42 * 86400)
    starts = np.array([10, 20, 30, 40, 50])
    free = np.array([1, 0, 2, 1, 3])
    assert pick_slot(starts, free, (15, 45), 1) == 30
    assert pick_slot(starts, free, (15, 45), 2) == 30
    assert pick_slot(starts, free, (15, 45), 1, prefer=41) == 40
    assert pick_slot(starts, free, (15, 45), 3) is None
    with pytest.raises(InvalidRequest):
        validate_template(SeriesTemplate("vaccine", 30, 20))


def execute(cals: dict[str, Calendar], rec: SeriesRecord, step: Step, now: int) -> str:
    """Run one step on its calendar; the outcome the protocol is told."""
    d = rec.doses[step.dose]
    cal = cals[d.provider_id]
    cmd: ConfirmHold | CancelBooking | ReleaseHold | RescheduleBooking
    if step.kind == "reschedule":
        cmd = RescheduleBooking(d.provider_id, d.service, step.key, now, d.booking_id, d.target)
    elif step.kind == "confirm":
        cmd = ConfirmHold(
            d.provider_id,
            d.service,
            step.key,
            now,
            d.hold_id,
            d.booking_id,
            rec.token_digest,
            rec.patient_ref,
            None,
            rec.series_id,
        )
    elif step.kind == "cancel":
        cmd = CancelBooking(d.provider_id, d.service, step.key, now, d.booking_id)
    else:
        cmd = ReleaseHold(d.provider_id, d.service, step.key, now, d.hold_id)
    try:
        cal.handle(cmd)
    except REFUSED:
        return "refused"
    return "ok"


class SeriesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cals = {
            p: Calendar.from_template(p, "vaccine", "UTC", TEMPLATE, date(2026, 3, 2), 5)
            for p in ("a", "b")
        }
        self.now = self.cals["a"].start - 3600
        self.series: list[SeriesRecord] = []
        self.n = 0

    def _open(self, p: str) -> list[int]:
        cal = self.cals[p]
        return [int(s) for s in cal.starts()[cal.capacity > 0]]

    @rule(
        i=st.integers(0, 7),
        j=st.integers(0, 7),
        ttls=st.tuples(st.sampled_from([30, 600]), st.sampled_from([30, 600])),
    )
    def hold_a_series(self, i: int, j: int, ttls: tuple[int, int]) -> None:
        self.n += 1
        sid = f"s{self.n}"
        doses = []
        for k, (p, idx) in enumerate((("a", i), ("b", j))):
            start = self._open(p)[idx]
            try:
                hold = self.cals[p].handle(
                    PlaceHold(
                        p, "vaccine", f"{sid}:hold:{k}", self.now, f"{sid}h{k}", start, 1, ttls[k]
                    )
                )
            except SlotUnavailable:
                for d in doses:  # all or nothing from the start
                    self.cals[d.provider_id].handle(
                        ReleaseHold(d.provider_id, "vaccine", None, self.now, d.hold_id)
                    )
                return
            doses.append(Dose(p, "vaccine", start, 1, hold.hold_id, f"{sid}b{k}"))
        self.series.append(SeriesRecord(sid, "held", tuple(doses), created_at=self.now))

    @rule(p=st.sampled_from(["a", "b"]), i=st.integers(0, 7))
    def someone_else_books(self, p: str, i: int) -> None:
        self.n += 1
        start = self._open(p)[i]
        try:
            self.cals[p].handle(PlaceHold(p, "vaccine", None, self.now, f"o{self.n}", start, 1, 60))
        except SlotUnavailable:
            return
        self.cals[p].handle(
            ConfirmHold(p, "vaccine", None, self.now, f"o{self.n}", f"ob{self.n}", b"", "x")
        )

    @precondition(lambda self: self.series)
    @rule(k=st.integers(0, 100))
    def confirm(self, k: int) -> None:
        i = k % len(self.series)
        rec = self.series[i]
        if rec.state in ("held", "confirming"):
            self.series[i] = request_confirm(rec, "patient", b"digest")

    @precondition(lambda self: self.series)
    @rule(k=st.integers(0, 100))
    def cancel(self, k: int) -> None:
        i = k % len(self.series)
        if self.series[i].state == "confirmed":
            self.series[i] = request_cancel(self.series[i])

    @precondition(lambda self: self.series)
    @rule(k=st.integers(0, 100), fault=st.sampled_from(["none", "before", "after"]))
    def step(self, k: int, fault: str) -> None:
        i = k % len(self.series)
        rec = self.series[i]
        step = next_step(rec)
        if step is None:
            return
        if fault == "before":  # the call never reached the calendar
            outcome = "unknown"
        else:
            outcome = execute(self.cals, rec, step, self.now)
            if fault == "after":  # it happened, the answer was lost
                outcome = "unknown"
        self.series[i] = advance(rec, step, outcome)  # type: ignore[arg-type]

    @precondition(lambda self: self.series)
    @rule(
        k=st.integers(0, 100),
        first=st.none() | st.integers(0, 7),
        second=st.none() | st.integers(0, 7),
    )
    def move(self, k: int, first: int | None, second: int | None) -> None:
        i = k % len(self.series)
        rec = self.series[i]
        plan = {
            n: self._open(d.provider_id)[idx]
            for n, (d, idx) in enumerate(zip(rec.doses, (first, second), strict=True))
            if idx is not None and self._open(d.provider_id)[idx] != d.start
        }
        if rec.state == "confirmed" and plan:
            self.series[i] = request_move(rec, plan)

    @precondition(lambda self: self.series)
    @rule(
        k=st.integers(0, 100),
        faults=st.lists(st.sampled_from(["none", "before", "after"]), min_size=2, max_size=2),
    )
    def steps_together(self, k: int, faults: list[str]) -> None:
        """The doses' confirms sent at once, each with its own fault."""
        i = k % len(self.series)
        rec = self.series[i]
        results = []
        for step, fault in zip(next_steps(rec), faults, strict=False):
            outcome = "unknown" if fault == "before" else execute(self.cals, rec, step, self.now)
            if fault == "after":
                outcome = "unknown"
            results.append((step, outcome, ""))
        self.series[i] = advance_all(rec, results)  # type: ignore[arg-type]

    @rule(seconds=st.sampled_from([10, 60, 700]))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds
        for cal in self.cals.values():
            cal.expire(self.now)

    def _active(self, d: Dose) -> bool:
        b = self.cals[d.provider_id].bookings.get(d.booking_id)
        return b is not None and b.status == "active"

    @invariant()
    def never_over_capacity(self) -> None:
        for cal in self.cals.values():
            taken = cal.booked.astype(int) + cal.held
            assert (taken <= cal.capacity).all()

    @invariant()
    def an_ended_series_is_whole_or_absent(self) -> None:
        for rec in self.series:
            active = [self._active(d) for d in rec.doses]
            if rec.state == "confirmed":
                assert all(active), rec
                for d in rec.doses:
                    assert (
                        self.cals[d.provider_id].bookings[d.booking_id].series_id == rec.series_id
                    )
            elif rec.state in ("aborted", "cancelled", "held"):
                assert not any(active), rec
            if rec.state in TERMINAL:  # nothing of it is left held
                for d in rec.doses:
                    assert d.hold_id not in self.cals[d.provider_id].holds, rec

    def teardown(self) -> None:
        # Every series in a protocol finishes once the calendars answer again.
        for i, rec in enumerate(self.series):
            for _ in range(10):
                step = next_step(rec)
                if step is None:
                    break
                rec = advance(rec, step, execute(self.cals, rec, step, self.now))  # type: ignore[arg-type]
            assert next_step(rec) is None
            assert rec.state in TERMINAL | {"held"}
            self.series[i] = rec
        self.an_ended_series_is_whole_or_absent()


TestSeries = SeriesMachine.TestCase
TestSeries.settings = settings(max_examples=500, stateful_step_count=30, deadline=None)


def test_a_first_dose_refused_gives_the_second_back() -> None:
    m = SeriesMachine()
    m.hold_a_series(0, 0, (30, 600))
    m.time_passes(60)  # dose 1's hold expires, dose 2's lives
    m.confirm(0)
    for fault in ("after", "none", "before", "none", "none", "none"):
        m.step(0, fault)
    rec = m.series[0]
    # dose 2's confirm may have been sent: undoing asks again (it books), then cancels
    assert (rec.state, [d.state for d in rec.doses]) == ("aborted", ["released", "cancelled"])
    m.an_ended_series_is_whole_or_absent()
    assert m.cals["b"].remaining_at(rec.doses[1].start) == 2


def test_a_second_dose_refused_cancels_the_first() -> None:
    m = SeriesMachine()
    m.hold_a_series(0, 0, (600, 30))
    m.confirm(0)
    m.step(0, "after")  # dose 1 booked, the answer lost
    m.time_passes(60)  # dose 2's hold expires
    for _ in range(4):
        m.step(0, "none")
    rec = m.series[0]
    assert (rec.state, [d.state for d in rec.doses]) == ("aborted", ["cancelled", "released"])
    assert m.cals["a"].bookings["s1b0"].status == "cancelled"
    m.an_ended_series_is_whole_or_absent()


def test_a_move_plans_the_second_dose_into_its_window() -> None:
    t = SeriesTemplate("vaccine", 21, 42)
    day = 86_400
    doses = (
        Dose("a", "vaccine", 0, 1, "h0", "b0", "booked"),
        Dose("b", "vaccine", 28 * day, 1, "h1", "b1", "booked"),
    )
    rec = SeriesRecord("s", "confirmed", doses)

    def nowhere(i: int, window: tuple[int, int], prefer: int) -> int | None:
        return None

    def keep_gap(i: int, window: tuple[int, int], prefer: int) -> int | None:
        return prefer

    assert plan_move(rec, t, 0, 3 * day, nowhere) == {0: 3 * day}  # dose 2 still fits
    assert plan_move(rec, t, 0, 10 * day, keep_gap) == {0: 10 * day, 1: 38 * day}
    with pytest.raises(InvalidRequest, match="no slot with room for dose 2"):
        plan_move(rec, t, 0, 10 * day, nowhere)
    with pytest.raises(InvalidRequest, match="21 to 42 days after dose 1"):
        plan_move(rec, t, 1, 50 * day, nowhere)
    assert plan_move(rec, t, 1, 40 * day, nowhere) == {1: 40 * day}


def confirmed_machine() -> SeriesMachine:
    m = SeriesMachine()
    m.hold_a_series(0, 0, (600, 600))
    m.confirm(0)
    m.step(0, "after")  # dose 1 booked, the answer lost: sent again
    for _ in range(2):
        m.step(0, "none")
    assert m.series[0].state == "confirmed"
    return m


def test_a_move_changes_the_bookings_and_the_record_together() -> None:
    m = confirmed_machine()
    m.move(0, 3, 5)
    for fault in ("before", "none", "after", "none"):
        m.step(0, fault)
    rec = m.series[0]
    assert rec.state == "confirmed" and rec.moves == 1
    assert [d.start for d in rec.doses] == [m._open("a")[3], m._open("b")[5]]
    m.an_ended_series_is_whole_or_absent()


def test_a_move_refused_half_way_moves_back() -> None:
    m = confirmed_machine()
    m.someone_else_books("a", 3)
    m.someone_else_books("a", 3)  # dose 1's new slot is full
    m.move(0, 3, 5)
    for _ in range(4):
        m.step(0, "none")
    rec = m.series[0]
    assert rec.state == "confirmed"
    assert "the move was refused: dose 1" in rec.reason
    assert [d.start for d in rec.doses] == [m._open("a")[0], m._open("b")[0]]  # as before
    m.an_ended_series_is_whole_or_absent()


def test_first_doses_are_those_with_a_second_dose_in_their_window() -> None:
    t = SeriesTemplate("vaccine", 2, 3)
    day = 86_400
    # one slot a day for 8 days; free on days 0, 1, 5 at the first site
    first = (0, day, np.array([1, 1, 0, 0, 0, 1, 0, 0]))
    own = ("a", (0, day, np.array([1, 1, 0, 0, 0, 1, 0, 0])))
    other = ("b", (0, day, np.array([0, 0, 0, 1, 0, 0, 0, 0])))
    # day 0: own days 2..3 full, other day 3 free; day 1: other day 3; day 5: nothing
    assert first_doses(first, [own, other], t, 1, 0) == [(0, "b", 3 * day), (day, "b", 3 * day)]
    assert first_doses(first, [own], t, 1, 0) == []
    assert first_doses(first, [own, other], t, 1, day) == [(day, "b", 3 * day)]
    assert first_doses(first, [own, other], t, 2, 0) == []  # a party of 2 fits nowhere


def test_a_refusal_next_to_an_unanswered_confirm_waits_for_it() -> None:
    m = SeriesMachine()
    m.hold_a_series(0, 0, (30, 600))
    m.time_passes(60)  # dose 1's hold expires: its confirm is refused
    m.confirm(0)
    m.steps_together(0, ["none", "after"])  # dose 2 booked, its answer lost
    assert m.series[0].state == "confirming"  # not undoing yet: dose 2 is unknown
    m.steps_together(0, ["none", "none"])
    rec = m.series[0]
    assert rec.state == "undoing" and [d.state for d in rec.doses] == ["refused", "booked"]
    for _ in range(2):
        m.step(0, "none")
    assert m.series[0].state == "aborted"
    m.an_ended_series_is_whole_or_absent()
