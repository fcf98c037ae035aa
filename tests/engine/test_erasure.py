"""Erasure of patient data in the engine (ErasePatientData -> PatientDataErased),
property-based: whatever was booked, an erasure by reference or by retention drops
exactly the data it names, keeps every booking and every place, forgets the remembered
results that would show it, and replays to the same state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.calendar import Calendar
from engine.codec import decode_snapshot, encode
from engine.eligibility import Attestation
from engine.errors import HexbookError, InvalidRequest
from engine.records import (
    Booking,
    CancelBooking,
    ConfirmHold,
    Contact,
    ErasePatientData,
    PlaceHold,
)

S = 900
REFS = ["ann", "bob", "cy"]

steps = st.lists(
    st.tuples(
        st.integers(0, 5),  # slot
        st.sampled_from(REFS),
        st.booleans(),  # with an attestation
        st.booleans(),  # with contact details
        st.booleans(),  # keyed (remembered)
        st.booleans(),  # cancelled afterwards
    ),
    max_size=14,
)
erasures = st.one_of(
    st.sampled_from(REFS).map(lambda r: (r, None)),
    st.integers(0, 7).map(lambda k: (None, k * S)),
)


def booked(plan: list[tuple[int, str, bool, bool, bool, bool]]) -> Calendar:
    cal = Calendar("p", "v", 0, S, np.full(6, 3, dtype=np.uint16))
    for i, (slot, ref, attest, reach, keyed, cancel) in enumerate(plan):
        att = Attestation(birth_date="1950-01-01", postal_code="60614") if attest else None
        contact = Contact(f"{ref}@example.org", "+13125550100") if reach else None
        try:
            cal.handle(PlaceHold("p", "v", f"h{i}" if keyed else None, 10, f"h{i}", slot * S, 1,
                                 300, att))  # fmt: skip
            cal.handle(ConfirmHold("p", "v", f"c{i}" if keyed else None, 11, f"h{i}", f"b{i}",
                                   b"d", ref, None, None, contact))  # fmt: skip
            if cancel:
                cal.handle(CancelBooking("p", "v", f"x{i}" if keyed else None, 12, f"b{i}"))
        except HexbookError:
            pass  # a full slot: this one was not booked
    return cal


def erased_ones(cal: Calendar, ref: str | None, end: int | None) -> set[str]:
    return {
        b.booking_id
        for b in cal.bookings.values()
        if b.has_patient_data
        and ((ref is not None and b.patient_ref == ref) or (end is not None and b.start + S <= end))
    }


def shows_data(result: object) -> bool:
    return isinstance(result, Booking) and result.has_patient_data


@given(steps, erasures)
def test_an_erasure_drops_exactly_the_data_it_names(
    plan: list[tuple[int, str, bool, bool, bool, bool]], erasure: tuple[str | None, int | None]
) -> None:
    ref, end = erasure
    cal = booked(plan)
    start = decode_snapshot(encode(cal.snapshot()))
    before = {b.booking_id: b for b in cal.bookings.values()}
    places = cal.snapshot().booked, cal.snapshot().held, cal.snapshot().capacity
    gone = erased_ones(cal, ref, end)
    cal.drain()
    assert cal.handle(ErasePatientData("p", "v", 99, ref, end)) is None
    events = cal.drain()
    assert len(events) == (1 if gone else 0)
    after = cal.bookings
    assert after.keys() == before.keys()  # every booking stays
    for bid, b in after.items():
        if bid in gone:
            assert b.attested is None and b.contact is None and b.erased_at == 99
            assert (b.start, b.status, b.patient_ref) == (
                before[bid].start, before[bid].status, before[bid].patient_ref
            )  # fmt: skip
        else:
            assert b == before[bid]
    snap = cal.snapshot()
    assert (snap.booked, snap.held, snap.capacity) == places  # no place moved
    # No remembered result shows an erased booking's data any more.
    for entry in snap.idempotency:
        if isinstance(entry.result, Booking) and entry.result.booking_id in gone:
            raise AssertionError(f"remembered {entry.key!r} still shows {entry.result}")
    # The event replays to the same state, and the state survives the codec.
    replayed = Calendar.from_snapshot(start)
    replayed.replay(events)
    assert encode(replayed.snapshot()) == encode(snap)
    assert decode_snapshot(encode(snap)) == snap
    # Erasing again erases nothing more.
    cal.handle(ErasePatientData("p", "v", 100, ref, end))
    assert cal.drain() == []


def test_an_erasure_names_a_reference_or_an_end_not_both() -> None:
    cal = booked([(0, "ann", True, True, True, False)])
    for ref, end in (("ann", 10), (None, None)):
        with pytest.raises(InvalidRequest, match="not both"):
            cal.handle(ErasePatientData("p", "v", 1, ref, end))
    assert any(shows_data(b) for b in cal.bookings.values())
