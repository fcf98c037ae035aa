"""Where sealed values live in Redis, which key seals each, and sealing them anew.

Sealed (:mod:`actors.sealing`): every shard's journal entries (``hexbook:shard:*:journal``,
field ``b``) and snapshot (``hexbook:shard:*:snapshot``), and every archived booking
(``hexbook:archive:*``). :func:`census` counts them by key id (``clear`` for values
written without a key); ``hexbook keyring status`` prints it, ``hexbook restore`` checks
it against the keys it is given, and after ``hexbook keyring reencrypt`` it shows one key.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

from actors import archive
from actors.sealing import Keyring, key_id_of

__all__ = ["CLEAR", "census", "reseal_archive"]

CLEAR = "clear"
_JOURNALS = "hexbook:shard:*:journal"
_SNAPSHOTS = "hexbook:shard:*:snapshot"

# Replace an archived value only if it is still the one read (a shard may have written
# it anew meanwhile: an erasure).
_SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


def _kid(value: Any) -> str:
    return key_id_of(bytes(value)) or CLEAR


def census(client: redis.Redis) -> Counter[str]:
    """How many stored values each key id seals (``clear``: none)."""
    counts: Counter[str] = Counter()
    for key in client.scan_iter(match=_SNAPSHOTS, count=500):
        raw: Any = client.get(key)
        if raw is not None:
            counts[_kid(raw)] += 1
    for key in client.scan_iter(match=_JOURNALS, count=500):
        after = "-"
        while True:
            rows: Any = client.xrange(key, min=after, max="+", count=500)
            if not rows:
                break
            for entry_id, fields in rows:
                counts[_kid(fields[b"b"])] += 1
                after = f"({entry_id.decode()}"
    for key in client.scan_iter(match=f"{archive.PREFIX}*", count=500):
        for _, raw in client.hscan_iter(key, count=500):
            counts[_kid(raw)] += 1
    return counts


def reseal_archive(client: redis.Redis, ring: Keyring) -> int:
    """Seal every archived booking not sealed with ``ring``'s current key anew with it;
    returns how many were rewritten."""
    swap = client.register_script(_SWAP)
    done = 0
    for key in client.scan_iter(match=f"{archive.PREFIX}*", count=500):
        provider_id, _, service = key.decode().removeprefix(archive.PREFIX).partition("/")
        for booking_id, raw in client.hscan_iter(key, count=500):
            if _kid(raw) == ring.current:
                continue
            booking = archive.open_booking(ring, key, booking_id, raw)
            fresh = archive.seal_booking(ring, provider_id, service, booking)
            done += int(swap(keys=[key], args=[booking_id, raw, fresh]))
    return done
