from __future__ import annotations

import pickle

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import codec, errors
from engine.calendar import Calendar
from engine.errors import CodecError, UnsupportedVersion
from engine.records import HoldPlaced, PlaceHold
from tests.strategies import bookings, commands, events, holds


@given(commands)
def test_commands_round_trip(command: object) -> None:
    data = codec.encode(command)  # type: ignore[arg-type]
    assert codec.decode_command(data) == command
    assert codec.decode(data) == command


@given(st.lists(commands, max_size=20))
def test_command_batches_round_trip(batch: list[object]) -> None:
    """What the gateway sends a shard: a list of commands as one msgpack array."""
    assert codec.decode_commands(codec.encode_commands(batch)) == batch  # type: ignore[arg-type]


@given(st.lists(events, min_size=1, max_size=5))
def test_a_batch_of_events_is_not_a_batch_of_commands(batch: list[object]) -> None:
    with pytest.raises(CodecError):
        codec.decode_commands(codec.encode(batch))  # type: ignore[arg-type]


@given(events)
def test_events_round_trip(event: object) -> None:
    assert codec.decode_event(codec.encode(event)) == event  # type: ignore[arg-type]


@given(st.lists(events, max_size=20))
def test_event_batches_round_trip(batch: list[object]) -> None:
    assert codec.decode_events(codec.encode(batch)) == batch  # type: ignore[arg-type]


@given(holds | bookings)
def test_state_records_round_trip(record: object) -> None:
    assert codec.decode(codec.encode(record)) == record  # type: ignore[arg-type]


def test_snapshot_round_trip_keeps_arrays_and_tables() -> None:
    cal = Calendar("p", "s", 0, 900, np.array([3, 2, 1], dtype=np.uint16))
    cal.handle(PlaceHold("p", "s", "k1", 0, "h1", 900, 2, 60))
    again = Calendar.from_snapshot(codec.decode_snapshot(codec.encode(cal.snapshot())))
    assert again.snapshot() == cal.snapshot()
    assert again.held.tolist() == [0, 2, 0]
    # The idempotency table came back too: the same key returns the same hold.
    assert again.handle(PlaceHold("p", "s", "k1", 5, "h-new", 900, 2, 60)).hold_id == "h1"


def test_unknown_version_is_refused_with_its_name() -> None:
    good = msgspec.msgpack.decode(codec.encode(HoldPlaced("h", 0, 1, 0, 60, None)))
    good[0] = "hold_placed.v9"
    with pytest.raises(UnsupportedVersion, match=r"hold_placed\.v9.*hold_placed\.v1"):
        codec.decode_event(msgspec.msgpack.encode(good))


def test_unknown_nested_version_is_refused() -> None:
    batch = msgspec.msgpack.decode(codec.encode([HoldPlaced("h", 0, 1, 0, 60, None)]))
    batch[0][0] = "hold_placed.v2"
    with pytest.raises(UnsupportedVersion):
        codec.decode_events(msgspec.msgpack.encode(batch))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", msgspec.msgpack.encode({"not": "a record"}), msgspec.msgpack.encode([1, 2])],
)
def test_garbage_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError) as info:
        codec.decode(data)
    assert not isinstance(info.value, UnsupportedVersion)


def test_wrong_field_type_is_a_codec_error() -> None:
    raw = msgspec.msgpack.decode(codec.encode(HoldPlaced("h", 0, 1, 0, 60, None)))
    raw[2] = "not a number"
    with pytest.raises(CodecError, match="not a valid hexbook record"):
        codec.decode_event(msgspec.msgpack.encode(raw))


def test_a_command_is_not_an_event() -> None:
    data = codec.encode(PlaceHold("p", "s", None, 0, "h", 0, 1, 60))
    with pytest.raises(CodecError):
        codec.decode_event(data)


# --- a shard's answer (the command channel): outcomes, errors as data, no pickles ------

_ERROR_SAMPLES: list[errors.HexbookError] = [
    errors.HexbookError("base"),
    errors.InvalidRequest("party_size must be at least 1"),
    errors.IdempotencyConflict("key-1"),
    errors.NotFound("nothing"),
    errors.ProviderNotFound("p1"),
    errors.CalendarNotFound("p1", "covid"),
    errors.HoldNotFound("h-secret-1234"),
    errors.BookingNotFound("b1"),
    errors.SlotUnavailable("p1", "covid", 1_700_000_000, 2, 1),
    errors.HoldExpired("h1", 1_700_000_000),
    errors.ScheduleConflict("would drop 3 bookings"),
    errors.BookingNotActive("b1"),
    errors.NotEligible("adults", 3, ("born after 2008-01-01", "outside the city")),
    errors.AdmissionRequired("room-1", "expired"),
    errors.AdmissionSpent("spent"),
    errors.AlreadyQueued("queued"),
    errors.RoomClosed("closed"),
    errors.RoomExists("exists"),
    errors.RoomNotFound("no room"),
    errors.EntryNotFound(),
    errors.NoOffer("expired"),
    errors.AlreadyWaiting("w1"),
    errors.CodecError("bad bytes"),
    errors.UnsupportedVersion("v9"),
    errors.KeyringError("no key"),
    errors.Unavailable("recovering"),
    errors.Moving("moving"),
]


def _as_pickle_gives(exc: errors.HexbookError) -> tuple[type, str, dict[str, object]]:
    again = pickle.loads(pickle.dumps(exc))  # what a Ray call carried before the channel
    return type(again), again.message, vars(again)


def test_every_error_class_has_a_sample() -> None:
    assert {type(e).__name__ for e in _ERROR_SAMPLES} == set(errors._ERRORS)


@pytest.mark.parametrize("exc", _ERROR_SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_in_an_answer_are_what_a_pickle_gives(exc: errors.HexbookError) -> None:
    (back,) = codec.decode_answer(codec.encode_answer([exc]))  # type: ignore[misc]
    assert isinstance(back, errors.HexbookError)
    assert (type(back), back.message, vars(back)) == _as_pickle_gives(exc)
    assert back.code == exc.code


@pytest.mark.parametrize("exc", _ERROR_SAMPLES, ids=lambda e: type(e).__name__)
def test_a_refused_batch_is_its_error(exc: errors.HexbookError) -> None:
    back = codec.decode_answer(codec.encode_answer(exc))
    assert isinstance(back, errors.HexbookError)
    assert (type(back), back.message, vars(back)) == _as_pickle_gives(exc)


@given(st.lists(st.one_of(holds, bookings, st.none(), st.sampled_from(_ERROR_SAMPLES))))
def test_outcomes_round_trip(outcomes: list[codec.Outcome]) -> None:
    back = codec.decode_answer(codec.encode_answer(outcomes))
    assert isinstance(back, list) and len(back) == len(outcomes)
    for got, sent in zip(back, outcomes, strict=True):
        if isinstance(sent, errors.HexbookError):
            assert (type(got), got.message, vars(got)) == _as_pickle_gives(sent)
        else:
            assert got == sent


def test_an_answer_carries_no_pickle() -> None:
    exc = errors.NotEligible("adults", 1, ("too young",))
    data = codec.encode_answer([exc])
    assert msgspec.msgpack.decode(data) == [
        [["failure", "NotEligible", ["adults", 1, ["too young"]], exc.message]],
        None,
    ]


def test_an_unknown_error_name_is_unavailable() -> None:
    data = msgspec.msgpack.encode([[["failure", "FromTheFuture", None, "try later"]], None])
    (back,) = codec.decode_answer(data)  # type: ignore[misc]
    assert type(back) is errors.Unavailable and back.message == "try later"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode([[["pickle", "x"]], None]),
        msgspec.msgpack.encode([None, None]),  # neither outcomes nor a failure
    ],
)
def test_a_garbage_answer_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode_answer(data)
