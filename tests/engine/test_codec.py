from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import codec
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
