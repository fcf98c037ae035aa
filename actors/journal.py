"""A shard's durable journal in Redis: what is written, where, and how it is read back.

Keys (``{shard}`` is the shard's name):

- ``hexbook:shard:{shard}:journal``: a stream; one entry per committed batch, field
  ``b`` = msgpack of a :class:`JournalBatch`, sealed (:mod:`actors.sealing`).
- ``hexbook:shard:{shard}:snapshot``: msgpack of a :class:`ShardSnapshot`, compressed
  (zlib, level 1: a launch city's 95 MB became 21 MB) and sealed: the state of every
  calendar of the shard as of journal entry ``last_id``; the journal is trimmed through
  that entry when the snapshot is written. A snapshot is staged in
  ``hexbook:shard:{shard}:snapshot:next`` a part of ``SNAPSHOT_PART`` bytes per
  command (Redis runs one command at a time: one 95 MB SET held every commit back for
  0.8 s, a 1 MB part holds them for a few ms), then renamed onto the snapshot key with
  the journal's trim in one script (:data:`PROMOTE_LUA`).
- ``hexbook:availability``: a stream shared by the shards journaling to this server,
  one entry per batch; its format is :mod:`actors.availability`'s alone.

All of these are on the Redis the directory maps the shard to (ADR 0025): the
deployment's, unless it journals to a server of its own.

A batch's journal entry and its availability entry are written in one MULTI/EXEC, so
they are durable together (with ``appendfsync always``, before Redis answers).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import msgspec

from actors.sealing import Keyring
from engine.provider import Provider
from engine.records import CalendarSnapshot, Event
from engine.waitlist import WaitEntry, WaitEvent

__all__ = [
    "PROMOTE_LUA",
    "SNAPSHOT_PART",
    "CalendarAdded",
    "CalendarEvents",
    "CalendarRemoved",
    "HandOffEnded",
    "HandedOff",
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
    "seal_compressed",
    "seal_snapshot",
    "snapshot_key",
    "snapshot_parts",
    "staged_snapshot_key",
]


def journal_key(shard: str) -> str:
    return f"hexbook:shard:{shard}:journal"


def snapshot_key(shard: str) -> str:
    return f"hexbook:shard:{shard}:snapshot"


def staged_snapshot_key(shard: str) -> str:
    """Where a snapshot is put together, part by part, before it replaces the last."""
    return f"hexbook:shard:{shard}:snapshot:next"


SNAPSHOT_PART = 1 << 20  # bytes a command writes while a snapshot is staged

# KEYS: staged, snapshot, journal; ARGV: the staged value's length, the trim's min id.
# The staged value replaces the snapshot only whole (a store cut short, or a second
# writer's, leaves another length), with the trim of what it covers, atomically.
PROMOTE_LUA = """
if redis.call('STRLEN', KEYS[1]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[2])
return 1
"""


class _Entry(msgspec.Struct, frozen=True, array_like=True, tag_field="t", gc=False):
    pass


class CalendarAdded(_Entry, frozen=True, tag="calendar_added.v1"):
    """A calendar came to this shard (provisioned, or moved here), with its full state."""

    provider: Provider
    snapshot: CalendarSnapshot


class CalendarRemoved(_Entry, frozen=True, tag="calendar_removed.v1"):
    """A calendar left this shard (moved away); its last state is kept in the entry.
    With ``provider`` it is handed off: the shard keeps that state, serving nothing
    from it, until :class:`HandOffEnded` (a move that is cut short resumes from it)."""

    snapshot: CalendarSnapshot
    provider: Provider | None = None


class HandOffEnded(_Entry, frozen=True, tag="hand_off_ended.v1"):
    """The provider's handed-off calendars are the new shard's now: forgotten here."""

    provider_id: str


class HandedOff(_Entry, frozen=True, tag="handed_off.v1"):
    """A provider this shard gave up whose move has not ended (in a snapshot)."""

    provider: Provider
    calendars: list[CalendarSnapshot]


class CalendarEvents(_Entry, frozen=True, tag="calendar_events.v1"):
    """Events of one calendar in one batch, in the order they happened."""

    provider_id: str
    service: str
    events: list[Event]


class WaitlistEvents(_Entry, frozen=True, tag="waitlist_events.v1"):
    """Entries that joined or left this shard's waitlist in one batch, in order."""

    events: list[WaitEvent]


JournalEntry = CalendarAdded | CalendarRemoved | CalendarEvents | WaitlistEvents | HandOffEnded


class JournalBatch(_Entry, frozen=True, tag="journal_batch.v1"):
    """Everything one group commit made durable."""

    entries: list[JournalEntry]


class ShardSnapshot(_Entry, frozen=True, tag="shard_snapshot.v1"):
    """Every calendar of a shard as of journal entry ``last_id`` (``"0-0"``: none)."""

    last_id: str
    providers: list[Provider]
    calendars: list[CalendarSnapshot]
    waitlist: list[WaitEntry] = []
    handed: list[HandedOff] = []


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(JournalBatch)
_snapshot_decoder = msgspec.msgpack.Decoder(ShardSnapshot)


def encode(record: JournalBatch | ShardSnapshot) -> bytes:
    return _encoder.encode(record)


def snapshot_parts(snap: ShardSnapshot) -> Iterator[bytes]:
    """``encode(snap)``, in pieces: the head, each calendar, the waitlist, the hand-offs.
    One encoder call holds the GIL until it is done; one call for a launch city's 95 MB held the
    shard's event loop (its writer) 0.2 s when idle and 1.3 s on a busy machine, while a
    call per calendar lets the loop in between. The pieces are msgpack's layout of the
    struct (an array: its tag, then its fields), so they join to ``encode(snap)``'s
    bytes exactly (a test holds them to it) and a snapshot reads with one decoder."""
    fields = len(ShardSnapshot.__struct_fields__)
    yield (
        _array_head(1 + fields)
        + _encoder.encode(ShardSnapshot.__struct_config__.tag)
        + _encoder.encode(snap.last_id)
        + _encoder.encode(snap.providers)
        + _array_head(len(snap.calendars))
    )
    for calendar in snap.calendars:
        yield _encoder.encode(calendar)
    yield _encoder.encode(snap.waitlist)
    yield _encoder.encode(snap.handed)


def _array_head(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


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
    """A snapshot's value as stored: compressed (zlib, level 1), then sealed with
    ``ring``'s current key. The shard makes the same value a piece at a time
    (``ShardCore.store_snapshot``); this is the whole of it in one call."""
    z = zlib.compressobj(1)
    packed = [z.compress(part) for part in snapshot_parts(snap)]
    packed.append(z.flush())
    return seal_compressed(b"".join(packed), ring, shard)


def seal_compressed(packed: bytes, ring: Keyring | None, shard: str) -> bytes:
    """The compressed encoding of a snapshot, sealed for ``shard``'s snapshot key."""
    return (ring or _NO_KEYS).seal(packed, snapshot_key(shard).encode())


def open_snapshot(data: bytes, ring: Keyring | None, shard: str) -> ShardSnapshot:
    """A stored snapshot, opened and decoded; one stored uncompressed (as written before
    snapshots were compressed) reads as well: msgpack of a struct (an array) never starts
    with zlib's 0x78."""
    plain = _open(data, ring, snapshot_key(shard))
    if plain[:1] == b"\x78":
        plain = zlib.decompress(plain)
    return decode_shard_snapshot(plain)


def _open(data: bytes, ring: Keyring | None, where: str) -> bytes:
    return (ring or _NO_KEYS).open(bytes(data), where.encode())
