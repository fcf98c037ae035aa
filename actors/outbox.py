"""The notifications outbox in Redis: its one format, written by the shards and read by
the deliverers (:mod:`gateway.deliver`).

- ``hexbook:outbox``: a stream, one entry per notice (:class:`engine.notices.Notice`),
  field ``n`` = the notice in msgpack, sealed (it carries contact details). A shard adds
  its batch's notices in the MULTI/EXEC that journals the batch, so a notice exists if
  and only if its event is durable. Deliverers read it in the consumer group
  ``deliverers``, and delete an entry once it is delivered or dead-lettered.
- ``hexbook:outbox:delivered:{notice_id}``: set when a notice was delivered (kept
  :data:`DELIVERED_TTL_SECONDS`); a notice made again, or read again after a deliverer
  died before it acknowledged, is not delivered twice. The channel's own check is the
  delivery key each delivery carries (``Message-ID`` of an e-mail, ``X-Hexbook-Delivery``
  of a webhook call).
- ``hexbook:outbox:dead``: a stream of notices given up on (field ``n`` as above, plus
  ``reason``, ``attempts``, ``notice_id``, ``kind``): ``hexbook outbox dead`` lists
  them, ``hexbook outbox replay`` puts them back.
- ``hexbook:outbox:stats``: a hash of counters (``delivered:<channel>``, ``failed``,
  ``dead``, ``skipped``) that every gateway's ``/metrics`` shows.
"""

from __future__ import annotations

import msgspec

from actors.sealing import Keyring
from engine.notices import Notice

__all__ = [
    "DEAD",
    "DELIVERED_TTL_SECONDS",
    "GROUP",
    "OUTBOX",
    "STATS",
    "delivered_key",
    "open_notice",
    "seal_notice",
]

OUTBOX = "hexbook:outbox"
DEAD = "hexbook:outbox:dead"
STATS = "hexbook:outbox:stats"
GROUP = "deliverers"
DELIVERED_TTL_SECONDS = 14 * 86_400

_NO_KEYS = Keyring()
_decode = msgspec.msgpack.Decoder(Notice).decode
_encode = msgspec.msgpack.Encoder().encode


def delivered_key(notice_id: str) -> str:
    return f"hexbook:outbox:delivered:{notice_id}"


def seal_notice(ring: Keyring | None, notice: Notice) -> bytes:
    """A notice as the outbox stores it (sealed; bound to the outbox's key)."""
    return (ring or _NO_KEYS).seal(_encode(notice), OUTBOX.encode())


def open_notice(ring: Keyring | None, raw: bytes) -> Notice:
    """A stored notice, opened and decoded (also from the dead-letter stream)."""
    return _decode((ring or _NO_KEYS).open(bytes(raw), OUTBOX.encode()))
