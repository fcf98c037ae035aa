"""A shard's durable journal in Redis: what is written, where, and how it is read back.

Keys (``{shard}`` is the shard's name):

- ``hexbook:shard:{shard}:journal``: a stream; one entry per committed batch, field
  ``b`` = msgpack of a :class:`JournalBatch`, sealed (:mod:`actors.sealing`).
- ``hexbook:shard:{shard}:snapshot``: msgpack of a :class:`ShardSnapshot`, sealed: the
  state of every calendar of the shard as of journal entry ``last_id``; the journal is
  trimmed through that entry when the snapshot is written.
- ``hexbook:availability``: a stream shared by all shards, one entry per batch; its
  format is :mod:`actors.availability`'s alone.

A batch's journal entry and its availability entry are written in one MULTI/EXEC, so
they are durable together (with ``appendfsync always``, before Redis answers).
"""

from __future__ import annotations

import msgspec

from actors.sealing import Keyring
from engine.provider import Provider
from engine.records import CalendarSnapshot, Event
from engine.waitlist import WaitEntry, WaitEvent

__all__ = [
    "CalendarAdded",
    "CalendarEvents",
    "CalendarRemoved",
    "JournalBatch",
    "ShardSnapshot",
    "WaitlistEvents",
    "decode_batch",
    "decode_shard_snapshot",
    "encode",
    "journal_key",
    "open_batch",
    "open_snapshot",
    "seal_batch",
    "seal_snapshot",
    "snapshot_key",
]


def journal_key(shard: str) -> str:
    return f"hexbook:shard:{shard}:journal"


def snapshot_key(shard: str) -> str:
    return f"hexbook:shard:{shard}:snapshot"


class _Entry(msgspec.Struct, frozen=True, array_like=True, tag_field="t", gc=False):
    pass


class CalendarAdded(_Entry, frozen=True, tag="calendar_added.v1"):
    """A calendar came to this shard (provisioned, or moved here), with its full state."""

    provider: Provider
    snapshot: CalendarSnapshot


class CalendarRemoved(_Entry, frozen=True, tag="calendar_removed.v1"):
    """A calendar left this shard (moved away); its last state is kept in the entry."""

    snapshot: CalendarSnapshot


class CalendarEvents(_Entry, frozen=True, tag="calendar_events.v1"):
    """Events of one calendar in one batch, in the order they happened."""

    provider_id: str
    service: str
    events: list[Event]


class WaitlistEvents(_Entry, frozen=True, tag="waitlist_events.v1"):
    """Entries that joined or left this shard's waitlist in one batch, in order."""

    events: list[WaitEvent]


JournalEntry = CalendarAdded | CalendarRemoved | CalendarEvents | WaitlistEvents


class JournalBatch(_Entry, frozen=True, tag="journal_batch.v1"):
    """Everything one group commit made durable."""

    entries: list[JournalEntry]


class ShardSnapshot(_Entry, frozen=True, tag="shard_snapshot.v1"):
    """Every calendar of a shard as of journal entry ``last_id`` (``"0-0"``: none)."""

    last_id: str
    providers: list[Provider]
    calendars: list[CalendarSnapshot]
    waitlist: list[WaitEntry] = []


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(JournalBatch)
_snapshot_decoder = msgspec.msgpack.Decoder(ShardSnapshot)


def encode(record: JournalBatch | ShardSnapshot) -> bytes:
    return _encoder.encode(record)


def decode_batch(data: bytes) -> JournalBatch:
    return _batch_decoder.decode(data)


def decode_shard_snapshot(data: bytes) -> ShardSnapshot:
    return _snapshot_decoder.decode(data)


_NO_KEYS = Keyring()


def seal_batch(batch: JournalBatch, ring: Keyring | None, shard: str) -> bytes:
    """A journal entry's value as stored: sealed with ``ring``'s current key."""
    return (ring or _NO_KEYS).seal(encode(batch), journal_key(shard).encode())


def open_batch(data: bytes, ring: Keyring | None, shard: str) -> JournalBatch:
    """A stored journal entry of ``shard``, opened with ``ring`` and decoded."""
    return decode_batch(_open(data, ring, journal_key(shard)))


def seal_snapshot(snap: ShardSnapshot, ring: Keyring | None, shard: str) -> bytes:
    return (ring or _NO_KEYS).seal(encode(snap), snapshot_key(shard).encode())


def open_snapshot(data: bytes, ring: Keyring | None, shard: str) -> ShardSnapshot:
    return decode_shard_snapshot(_open(data, ring, snapshot_key(shard)))


def _open(data: bytes, ring: Keyring | None, where: str) -> bytes:
    return (ring or _NO_KEYS).open(bytes(data), where.encode())
