"""The archive: bookings of days that left a calendar's window (the rolling horizon).

When a calendar rolls on, the bookings of the slots that leave are written here in the
same MULTI/EXEC as the journal entry that drops them (:mod:`actors.shard_core`), so a
booking is always in exactly one of the two (on the shard's journal server; a move
carries it to the new shard's). Key ``hexbook:archive:{provider}/{service}``,
a hash of booking id -> msgpack of the :class:`~engine.records.Booking`, sealed
(:mod:`actors.sealing`, bound to the key and the booking id). A booking stays
readable by id (``GET /v1/bookings/{id}`` falls back to the archive); :func:`export`
reads them all, for an export or an audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

from actors.sealing import Keyring
from engine.codec import decode, encode
from engine.errors import KeyringError
from engine.records import Booking

__all__ = ["archive_key", "export", "open_booking", "read_booking", "seal_booking"]

PREFIX = "hexbook:archive:"


def archive_key(provider_id: str, service: str) -> str:
    return f"{PREFIX}{provider_id}/{service}"


_NO_KEYS = Keyring()


def _where(key: str | bytes, booking_id: str | bytes) -> bytes:
    k = key.encode() if isinstance(key, str) else key
    b = booking_id.encode() if isinstance(booking_id, str) else booking_id
    return k + b"#" + b


def seal_booking(ring: Keyring | None, provider_id: str, service: str, booking: Booking) -> bytes:
    """An archived booking's value as stored."""
    return (ring or _NO_KEYS).seal(
        encode(booking), _where(archive_key(provider_id, service), booking.booking_id)
    )


def _booking(raw: Any, ring: Keyring | None, where: bytes) -> Booking | None:
    if raw is None:
        return None
    record = decode((ring or _NO_KEYS).open(bytes(raw), where))
    return record if isinstance(record, Booking) else None


def open_booking(
    ring: Keyring | None, key: str | bytes, booking_id: str | bytes, raw: Any
) -> Booking:
    """The archived booking stored as ``raw`` at ``key``/``booking_id``."""
    found = _booking(raw, ring, _where(key, booking_id))
    if found is None:
        raise KeyringError(f"the value of {booking_id!r} in {key!r} is not a booking")
    return found


async def read_booking(
    client: aioredis.Redis,
    provider_id: str,
    service: str,
    booking_id: str,
    ring: Keyring | None = None,
) -> Booking | None:
    """An archived booking, or ``None``."""
    key = archive_key(provider_id, service)
    return _booking(await client.hget(key, booking_id), ring, _where(key, booking_id))


def export(client: redis.Redis, ring: Keyring | None = None) -> Iterator[tuple[str, str, Booking]]:
    """Every archived booking: (provider id, service, booking)."""
    for key in client.scan_iter(match=f"{PREFIX}*", count=500):
        provider_id, _, service = key.decode().removeprefix(PREFIX).partition("/")
        for booking_id, raw in client.hscan_iter(key, count=500):
            booking = _booking(raw, ring, _where(key, booking_id))
            if booking is not None:
                yield provider_id, service, booking
