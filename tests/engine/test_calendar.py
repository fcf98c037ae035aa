"""Calendar behaviour, one rule at a time (the state machine covers the combinations)."""

from __future__ import annotations

import pickle
from datetime import date

import numpy as np
import pytest

from engine import errors
from engine.calendar import Calendar
from engine.records import (
    BookingRescheduled,
    CancelBooking,
    ConfirmHold,
    ExpireHolds,
    HoldReleased,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
)
from engine.schedule import WeeklyTemplate

S = 900


def cal(*capacity: int) -> Calendar:
    return Calendar("p1", "vaccine", 0, S, np.array(capacity, dtype=np.uint16))


def hold(
    c: Calendar,
    hid: str,
    slot: int,
    now: int = 0,
    party: int = 1,
    ttl: int = 300,
    key: str | None = None,
) -> object:
    return c.handle(PlaceHold("p1", "vaccine", key, now, hid, slot * S, party, ttl))


def confirm(c: Calendar, hid: str, bid: str, now: int = 0, key: str | None = None) -> object:
    return c.handle(ConfirmHold("p1", "vaccine", key, now, hid, bid, b"d", "ref"))


def test_hold_then_confirm_moves_places_from_held_to_booked() -> None:
    c = cal(2, 2)
    hold(c, "h1", 1, party=2)
    assert (c.held.tolist(), c.booked.tolist(), c.remaining().tolist()) == ([0, 2], [0, 0], [2, 0])
    booking = confirm(c, "h1", "b1", now=10)
    assert (c.held.tolist(), c.booked.tolist()) == ([0, 0], [0, 2])
    assert booking.start == S and booking.party_size == 2 and booking.status == "active"
    assert [type(e).__name__ for e in c.drain()] == ["HoldPlaced", "HoldConfirmed"]
    assert c.drain() == []


def test_full_slot_is_unavailable_and_says_which() -> None:
    c = cal(1)
    hold(c, "h1", 0)
    with pytest.raises(errors.SlotUnavailable, match=r"'p1'.*0 free place.*party of 1"):
        hold(c, "h2", 0)
    assert c.held.tolist() == [1]


def test_party_larger_than_free_places_is_refused() -> None:
    c = cal(3)
    hold(c, "h1", 0, party=2)
    with pytest.raises(errors.SlotUnavailable) as info:
        hold(c, "h2", 0, party=2)
    assert info.value.free == 1


def test_hold_expires_exactly_at_its_expiry() -> None:
    c = cal(1, 1)
    hold(c, "h1", 0, now=0, ttl=60)
    hold(c, "h2", 1, now=0, ttl=60)
    assert confirm(c, "h1", "b1", now=59).start == 0
    with pytest.raises(errors.HoldExpired, match="expired at 60"):
        confirm(c, "h2", "b2", now=60)
    # The expiry was journaled even though the command failed.
    released = [e for e in c.drain() if isinstance(e, HoldReleased)]
    assert [(e.hold_id, e.start, e.reason, e.at) for e in released] == [("h2", S, "expired", 60)]
    assert c.remaining().tolist() == [0, 1]


def test_sweep_expires_due_holds_only() -> None:
    c = cal(1, 1)
    hold(c, "h1", 0, now=0, ttl=10)
    hold(c, "h2", 1, now=0, ttl=100)
    c.drain()
    c.handle(ExpireHolds("p1", "vaccine", 50))
    assert list(c.holds) == ["h2"]
    assert [e.hold_id for e in c.drain()] == ["h1"]
    assert c.expired_at("h1") == 10


def test_release_frees_the_place_and_the_hold_is_gone() -> None:
    c = cal(1)
    hold(c, "h1", 0)
    c.handle(ReleaseHold("p1", "vaccine", None, 5, "h1"))
    assert c.remaining().tolist() == [1]
    with pytest.raises(errors.HoldNotFound):
        confirm(c, "h1", "b1", now=6)


def test_repeated_hold_returns_the_first_result_and_changes_nothing() -> None:
    c = cal(5)
    first = hold(c, "h1", 0, key="k")
    c.drain()
    again = hold(c, "h-retry", 0, now=3, key="k")  # a retry generates a new id: ignored
    assert again == first
    assert c.held.tolist() == [1] and c.drain() == []


def test_same_key_for_another_command_is_a_conflict() -> None:
    c = cal(5, 5)
    hold(c, "h1", 0, key="k")
    with pytest.raises(errors.IdempotencyConflict, match="'k'"):
        hold(c, "h2", 1, key="k")
    with pytest.raises(errors.IdempotencyConflict):
        confirm(c, "h1", "b1", key="k")


def test_repeated_confirm_returns_the_booking_once() -> None:
    c = cal(5)
    hold(c, "h1", 0)
    first = confirm(c, "h1", "b1", now=1, key="c")
    assert confirm(c, "h1", "b-retry", now=2, key="c") == first
    assert c.booked.tolist() == [1] and list(c.bookings) == ["b1"]


def test_cancel_frees_places_once() -> None:
    c = cal(1)
    hold(c, "h1", 0)
    confirm(c, "h1", "b1")
    assert c.handle(CancelBooking("p1", "vaccine", None, 5, "b1")).status == "cancelled"
    assert c.booked.tolist() == [0]
    with pytest.raises(errors.BookingNotActive):
        c.handle(CancelBooking("p1", "vaccine", None, 6, "b1"))
    with pytest.raises(errors.BookingNotFound):
        c.handle(CancelBooking("p1", "vaccine", None, 6, "nope"))


def test_reschedule_is_all_or_nothing() -> None:
    c = cal(1, 1, 0)
    hold(c, "h1", 0)
    confirm(c, "h1", "b1")
    with pytest.raises(errors.SlotUnavailable):
        c.handle(RescheduleBooking("p1", "vaccine", None, 5, "b1", 2 * S))
    assert c.booked.tolist() == [1, 0, 0] and c.bookings["b1"].start == 0
    moved = c.handle(RescheduleBooking("p1", "vaccine", None, 6, "b1", S))
    assert moved.start == S and c.booked.tolist() == [0, 1, 0]
    assert isinstance(c.drain()[-1], BookingRescheduled)
    with pytest.raises(errors.InvalidRequest, match="already at"):
        c.handle(RescheduleBooking("p1", "vaccine", None, 7, "b1", S))


@pytest.mark.parametrize("start", [-S, S // 2, 3 * S])
def test_a_start_that_is_not_a_slot_is_invalid(start: int) -> None:
    c = cal(1, 1)
    with pytest.raises(errors.InvalidRequest, match=r"not a slot start.*every 15 min"):
        c.handle(PlaceHold("p1", "vaccine", None, 0, "h1", start, 1, 60))


@pytest.mark.parametrize(("party", "ttl"), [(0, 60), (-1, 60), (1, 0)])
def test_bad_party_or_ttl_is_invalid(party: int, ttl: int) -> None:
    with pytest.raises(errors.InvalidRequest):
        hold(cal(5), "h1", 0, party=party, ttl=ttl)


def test_ids_cannot_be_reused() -> None:
    c = cal(5)
    hold(c, "h1", 0)
    with pytest.raises(errors.InvalidRequest, match="hold id"):
        hold(c, "h1", 0)
    confirm(c, "h1", "b1")
    hold(c, "h2", 0)
    with pytest.raises(errors.InvalidRequest, match="booking id"):
        confirm(c, "h2", "b1")


def test_from_template_builds_the_local_week() -> None:
    t = WeeklyTemplate.uniform(("mon", "tue"), "09:00", "10:00", 4)
    c = Calendar.from_template("p1", "vaccine", "America/Chicago", t, date(2026, 3, 2), days=7)
    assert c.n_slots == 7 * 96 - 4  # Sunday 8 March has 23 hours (spring forward)
    assert int(c.capacity.sum()) == 2 * 4 * 4
    assert c.remaining_at(int(c.starts()[np.flatnonzero(c.capacity)[0]])) == 4


def test_state_arrays_are_read_only_views() -> None:
    c = cal(1)
    with pytest.raises(ValueError, match="read-only"):
        c.booked[0] = 1


def test_capacity_out_of_range_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest):
        Calendar("p", "s", 0, S, np.array([70_000]))


@pytest.mark.parametrize(
    "error",
    [
        errors.SlotUnavailable("p", "s", 0, 2, 1),
        errors.HoldExpired("abcdefghijkl", 5),
        errors.IdempotencyConflict("k"),
        errors.BookingNotFound("b"),
        errors.InvalidRequest("x"),
    ],
)
def test_errors_survive_pickling_with_code_and_message(error: errors.HexbookError) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert (again.code, str(again)) == (error.code, str(error))


def test_hold_ids_are_redacted_in_messages() -> None:
    assert "abcdefghijkl" not in str(errors.HoldExpired("abcdefghijkl", 5))
    assert "abcdef" in str(errors.HoldNotFound("abcdefghijkl"))
