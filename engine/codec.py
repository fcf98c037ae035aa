"""The msgpack codec for hexbook records.

Every record is encoded as a msgpack array whose first element is its versioned tag
(``"hold_placed.v1"``). Decoding validates types, and a record whose tag this version
of hexbook does not know is refused with :class:`~engine.errors.UnsupportedVersion`
(a newer writer) or :class:`~engine.errors.CodecError` (not a hexbook record at all).

>>> from engine.records import HoldReleased
>>> ev = HoldReleased("h1", 0, "expired", 1700000000, None)
>>> decode_event(encode(ev)) == ev
True
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from engine.errors import (
    CodecError,
    HexbookError,
    UnsupportedVersion,
    error_from_parts,
    error_parts,
)
from engine.records import Booking, CalendarSnapshot, Command, Event, Hold, Record, Result

__all__ = [
    "Outcome",
    "decode",
    "decode_answer",
    "decode_command",
    "decode_commands",
    "decode_event",
    "decode_events",
    "decode_snapshot",
    "encode",
    "encode_answer",
    "encode_commands",
]

Outcome = Result | HexbookError | None
"""What one command came to: its result, the domain error it was refused with, or
nothing (a command with no result)."""

_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(Record)
_command_decoder = msgspec.msgpack.Decoder(Command)
_commands_decoder = msgspec.msgpack.Decoder(list[Command])
_event_decoder = msgspec.msgpack.Decoder(Event)
_events_decoder = msgspec.msgpack.Decoder(list[Event])
_snapshot_decoder = msgspec.msgpack.Decoder(CalendarSnapshot)
_raw_decoder = msgspec.msgpack.Decoder()

T = TypeVar("T")


def encode(record: Record | list[Event]) -> bytes:
    """Encode a record (or a list of events, one journal entry) as msgpack."""
    return _encoder.encode(record)


def decode(data: bytes) -> Record:
    """Decode any hexbook record."""
    return _decode(_record_decoder, data)  # type: ignore[no-any-return]


def decode_command(data: bytes) -> Command:
    """Decode a command; anything else is a :class:`CodecError`."""
    return _decode(_command_decoder, data)  # type: ignore[no-any-return]


def encode_commands(commands: list[Command]) -> bytes:
    """A batch of commands as one msgpack array: what the gateway sends a shard (Ray
    pickles a list of records for ten times the time)."""
    return _encoder.encode(commands)


def decode_commands(data: bytes) -> list[Command]:
    """A batch from :func:`encode_commands`; anything else is a :class:`CodecError`."""
    return _decode(_commands_decoder, data)  # type: ignore[no-any-return]


class _Failure(msgspec.Struct, frozen=True, array_like=True, tag_field="t", tag="failure"):
    """A domain error as data (:func:`engine.errors.error_parts`)."""

    name: str
    args: list[Any] | None
    message: str


class _Answer(msgspec.Struct, frozen=True, array_like=True):
    outcomes: list[Hold | Booking | _Failure | None] | None = None
    failure: _Failure | None = None


_answer_decoder = msgspec.msgpack.Decoder(_Answer)


def encode_answer(answer: list[Outcome] | HexbookError) -> bytes:
    """A shard's answer to a batch: one outcome per command, or the error the whole
    batch was refused with (the shard is recovering, its journal is unreachable). No
    pickles: errors travel as their class name, arguments and message."""
    if isinstance(answer, HexbookError):
        return _encoder.encode(_Answer(failure=_Failure(*error_parts(answer))))
    return _encoder.encode(
        _Answer(
            outcomes=[
                _Failure(*error_parts(o)) if isinstance(o, HexbookError) else o for o in answer
            ]
        )
    )


def decode_answer(data: bytes) -> list[Outcome] | HexbookError:
    """What :func:`encode_answer` wrote; errors are rebuilt as the classes they were."""
    answer: _Answer = _decode(_answer_decoder, data)
    if answer.outcomes is None:
        if answer.failure is None:
            raise CodecError("not a valid hexbook answer: neither outcomes nor a failure")
        failure = answer.failure
        return error_from_parts(failure.name, failure.args, failure.message)
    return [
        error_from_parts(o.name, o.args, o.message) if isinstance(o, _Failure) else o
        for o in answer.outcomes
    ]


def decode_event(data: bytes) -> Event:
    """Decode one event."""
    return _decode(_event_decoder, data)  # type: ignore[no-any-return]


def decode_events(data: bytes) -> list[Event]:
    """Decode a list of events written by ``encode(list_of_events)``."""
    return _decode(_events_decoder, data)  # type: ignore[no-any-return]


def decode_snapshot(data: bytes) -> CalendarSnapshot:
    """Decode a calendar snapshot."""
    return _decode(_snapshot_decoder, data)  # type: ignore[no-any-return]


def _decode(decoder: msgspec.msgpack.Decoder[Any], data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        tag = _first_unknown_tag(data)
        if tag is not None:
            raise UnsupportedVersion(
                f"record {tag!r} was written by another version of hexbook; this one reads "
                f"{', '.join(sorted(_versions_of(tag))) or 'no version of it'}: "
                "upgrade hexbook or replay with the version that wrote it"
            ) from exc
        raise CodecError(f"not a valid hexbook record: {exc}") from exc


def _known_tags() -> set[str]:
    tags: set[str] = set()
    stack: list[type] = [Record.__args__[i] for i in range(len(Record.__args__))]
    while stack:
        cls = stack.pop()
        args = getattr(cls, "__args__", None)
        if args:
            stack.extend(args)
            continue
        tag = getattr(getattr(cls, "__struct_config__", None), "tag", None)
        if isinstance(tag, str):
            tags.add(tag)
    return tags


# CalendarSchedule is only ever inside a snapshot, not one of the unions walked above.
_KNOWN_TAGS = frozenset(_known_tags() | {"calendar_schedule.v1"})


def _versions_of(tag: str) -> set[str]:
    base = tag.rsplit(".v", 1)[0]
    return {t for t in _KNOWN_TAGS if t.rsplit(".v", 1)[0] == base}


def _first_unknown_tag(data: bytes) -> str | None:
    """Find a versioned tag in the raw data that this hexbook does not know."""
    try:
        raw = _raw_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    stack = [raw]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if item and isinstance(item[0], str) and ".v" in item[0] and item[0] not in _KNOWN_TAGS:
                return item[0]
            stack.extend(item)
    return None
