"""The archive: bookings of days that left a calendar's window (the rolling horizon).

When a calendar rolls on, the bookings of the slots that leave are written here in the
same MULTI/EXEC as the journal entry that drops them (:mod:`actors.shard_core`), so a
booking is always in exactly one of the two. Key ``hexbook:archive:{provider}/{service}``,
a hash of booking id -> msgpack of the :class:`~engine.records.Booking`. A booking stays
readable by id (``GET /v1/bookings/{id}`` falls back to the archive); :func:`export`
reads them all, for an export or an audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

from engine.codec import decode
from engine.records import Booking

__all__ = ["archive_key", "export", "read_booking"]

PREFIX = "hexbook:archive:"


def archive_key(provider_id: str, service: str) -> str:
    return f"{PREFIX}{provider_id}/{service}"


def _booking(raw: Any) -> Booking | None:
    if raw is None:
        return None
    record = decode(bytes(raw))
    return record if isinstance(record, Booking) else None


async def read_booking(
    client: aioredis.Redis, provider_id: str, service: str, booking_id: str
) -> Booking | None:
    """An archived booking, or ``None``."""
    return _booking(await client.hget(archive_key(provider_id, service), booking_id))


def export(client: redis.Redis) -> Iterator[tuple[str, str, Booking]]:
    """Every archived booking: (provider id, service, booking)."""
    for key in client.scan_iter(match=f"{PREFIX}*", count=500):
        provider_id, _, service = key.decode().removeprefix(PREFIX).partition("/")
        for raw in client.hvals(key):
            booking = _booking(raw)
            if booking is not None:
                yield provider_id, service, booking
