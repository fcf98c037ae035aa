"""Hypothesis strategies shared by the tests: records, providers, positions."""

from __future__ import annotations

from hypothesis import strategies as st

from engine.records import (
    Booking,
    BookingCancelled,
    BookingRescheduled,
    CancelBooking,
    ConfirmHold,
    Contact,
    ErasePatientData,
    ExpireHolds,
    Hold,
    HoldConfirmed,
    HoldPlaced,
    HoldReleased,
    PatientDataErased,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
)

ids = st.text("abcdef0123456789-", min_size=1, max_size=40)
keys = st.none() | ids
times = st.integers(0, 2**40)
small = st.integers(1, 500)
texts = st.text(max_size=30)

commands = st.one_of(
    st.builds(PlaceHold, ids, ids, keys, times, ids, times, small, small),
    st.builds(
        ConfirmHold,
        ids,
        ids,
        keys,
        times,
        ids,
        ids,
        st.binary(max_size=32),
        texts,
        st.none(),
        st.none() | ids,
        st.none() | st.builds(Contact, st.none() | texts),
    ),
    st.builds(ReleaseHold, ids, ids, keys, times, ids),
    st.builds(CancelBooking, ids, ids, keys, times, ids),
    st.builds(RescheduleBooking, ids, ids, keys, times, ids, times),
    st.builds(ExpireHolds, ids, ids, times),
    st.builds(ErasePatientData, ids, ids, times, st.none() | texts, st.none() | times),
)
events = st.one_of(
    st.builds(HoldPlaced, ids, times, small, times, small, keys),
    st.builds(HoldConfirmed, ids, ids, st.binary(max_size=32), texts, times, keys),
    st.builds(HoldReleased, ids, times, st.sampled_from(["released", "expired"]), times, keys),
    st.builds(BookingCancelled, ids, times, keys),
    st.builds(BookingRescheduled, ids, times, times, times, keys),
    st.builds(
        PatientDataErased,
        st.lists(ids, max_size=5),
        st.sampled_from(["request", "retention"]),
        times,
    ),
)
holds = st.builds(Hold, times, ids, times, small)
bookings = st.builds(
    Booking, ids, times, small, texts, st.binary(max_size=32), ids, times,
    st.sampled_from(["active", "cancelled"]),
)  # fmt: skip

# Around Chicago: the demo city.
latitudes = st.floats(41.64, 42.02, allow_nan=False)
longitudes = st.floats(-87.94, -87.52, allow_nan=False)
