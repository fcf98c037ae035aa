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

import time
from typing import Any

import msgspec
import redis

from actors.sealing import Keyring
from engine.notices import Notice

__all__ = [
    "DEAD",
    "DELIVERED_TTL_SECONDS",
    "GROUP",
    "OUTBOX",
    "STATS",
    "dead_letters",
    "delivered_key",
    "open_notice",
    "replay",
    "seal_notice",
    "stats",
    "stats_of",
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


def dead_letters(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The dead letters, oldest first: id, notice id, kind, why, tries, when."""
    rows: Any = client.xrange(DEAD, count=limit)
    out = []
    for entry_id, f in rows:
        out.append(
            {
                "id": entry_id.decode(),
                "notice_id": f.get(b"notice_id", b"").decode(),
                "kind": f.get(b"kind", b"").decode(),
                "reason": f.get(b"reason", b"").decode(),
                "attempts": int(f.get(b"attempts", b"0")),
                "at": int(f.get(b"at", b"0")),
            }
        )
    return out


def replay(client: redis.Redis, ids: list[str] | None = None) -> int:
    """Put dead letters (``ids``, or all) back in the outbox, to be tried afresh.
    Returns how many went back."""
    rows: Any = []
    if ids is None:
        rows = client.xrange(DEAD)
    else:
        for i in ids:
            one: Any = client.xrange(DEAD, min=i, max=i)
            rows += one
    moved = 0
    for entry_id, fields in rows:
        pipe = client.pipeline(transaction=True)
        pipe.xadd(OUTBOX, {"n": fields[b"n"]})
        pipe.xdel(DEAD, entry_id)
        pipe.execute()
        moved += 1
    return moved


def stats_of(clients: list[redis.Redis]) -> dict[str, Any]:
    """:func:`stats` of the outboxes of several Redis servers (shards journaling to
    more than one, ADR 0025), added up; the oldest is the oldest of all."""
    parts = [stats(c) for c in clients]
    counters: dict[str, int] = {}
    for part in parts:
        for k, v in part["counters"].items():
            counters[k] = counters.get(k, 0) + v
    return {
        "waiting": sum(p["waiting"] for p in parts),
        "pending": sum(p["pending"] for p in parts),
        "oldest_seconds": max((p["oldest_seconds"] for p in parts), default=0.0),
        "dead": sum(p["dead"] for p in parts),
        "counters": counters,
    }


def stats(client: redis.Redis) -> dict[str, Any]:
    """What ``/metrics`` shows of the outbox: entries not yet delivered, how many of
    them a deliverer is working on, the age of the oldest, the dead letters, and the
    counters (``delivered:<channel>``, ``failed``, ``dead``, ``skipped``)."""
    pipe = client.pipeline(transaction=False)
    pipe.xlen(OUTBOX)
    pipe.xrange(OUTBOX, count=1)
    pipe.xlen(DEAD)
    pipe.hgetall(STATS)
    length, first, dead, counters = pipe.execute()
    oldest = 0.0
    if first:
        ms = int(first[0][0].split(b"-")[0])
        oldest = max(0.0, time.time() - ms / 1000)
    pending = 0
    try:
        for group in client.xinfo_groups(OUTBOX):
            if group["name"] in (GROUP, GROUP.encode()):
                pending = int(group["pending"])
    except redis.ResponseError:  # no outbox yet
        pass
    return {
        "waiting": int(length),
        "pending": pending,
        "oldest_seconds": oldest,
        "dead": int(dead),
        "counters": {k.decode(): int(v) for k, v in counters.items()},
    }
