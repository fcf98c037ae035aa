"""Reading the availability stream: every change of free places, from any point.

Shards append one entry per committed batch to ``hexbook:availability`` (see
:mod:`actors.journal`); a reader keeps the id of the last entry it saw and asks for
what came after, so it can stop and resume, or start from the beginning (``"0-0"``)
to rebuild its view. The gateway's search index and the live feed follow it.

>>> deltas, last = read_availability(client, after="0-0")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import redis

from actors.journal import AVAILABILITY_STREAM

__all__ = ["Delta", "read_availability"]

_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, int, int]])


class Delta(NamedTuple):
    """Free places of one slot after a change; ``start == -1``: the calendar was added or
    removed, read it whole from its shard."""

    entry_id: str
    shard: str
    provider_id: str
    service: str
    start: int
    remaining: int


def read_availability(
    client: redis.Redis, after: str = "0-0", count: int = 1000, block_ms: int | None = None
) -> tuple[list[Delta], str]:
    """The deltas of up to ``count`` entries after entry id ``after``, and the id of the
    last entry read (``after`` again when there was nothing new). ``block_ms`` waits
    that long for new entries when there are none."""
    reply: Any = client.xread({AVAILABILITY_STREAM: after}, count=count, block=block_ms)
    deltas: list[Delta] = []
    last = after
    for _stream, rows in reply or []:
        for entry_id, fields in rows:
            last = entry_id.decode()
            shard = fields[b"shard"].decode()
            for pid, service, start, remaining in _decoder.decode(fields[b"d"]):
                deltas.append(Delta(last, shard, pid, service, start, remaining))
    return deltas, last
