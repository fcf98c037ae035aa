"""The availability stream: its format, written and read here and nowhere else.

Shards append one entry per committed batch to ``hexbook:availability`` (in the same
MULTI/EXEC as the batch's journal entry, see :mod:`actors.shard_core`). An entry has
two fields: ``shard`` (its name) and ``d``, a msgpack list of
``[provider_id, service, start, remaining]``; ``start == remaining == -1`` stands for
"this calendar was added, replaced, moved or removed: read it whole from its shard".
Readers never see that encoding: :func:`decode_entry` gives :class:`SlotFree` and
:class:`CalendarChanged` values.

A reader keeps the id of the last entry it applied and asks for what came after, so it
can stop and resume, or start from ``"0-0"`` to rebuild its view. The gateway's search
index and the live feed follow the stream through :class:`AvailabilityReader`, whose
Redis client waits longer than its blocking reads (a client whose socket timeout is
shorter than ``BLOCK`` drops every idle reader).

Where shards journal to more than one Redis (ADR 0025), each server has its own stream
(each written in the MULTI of its shards' batches) and :class:`AvailabilityStreams`
reads them as one: its cursor is the ids of every stream's last entry read, in the
order of the servers, joined by ``.`` (``1712-0.1713-4``); with one server it is that
stream's entry id, as before.

>>> entries, last = read_availability(client, after="0-0")   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec
import redis
import redis.asyncio as aioredis

__all__ = [
    "AVAILABILITY_STREAM",
    "AvailabilityEntry",
    "AvailabilityReader",
    "AvailabilityStreams",
    "CalendarChanged",
    "Change",
    "SlotFree",
    "decode_entry",
    "encode_entry",
    "entry_id_key",
    "parse_entry_id",
    "read_availability",
    "stop_tasks",
]

log = logging.getLogger("hexbook.availability")

AVAILABILITY_STREAM = "hexbook:availability"
_WHOLE = -1  # start and remaining of a CalendarChanged on the wire
_MAX_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit integers
_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
CURSOR_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}(\.[0-9]{1,20}-[0-9]{1,20}){0,63}$"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, int, int]])


class SlotFree(NamedTuple):
    """The free places of one slot (UTC ``start``) after a change."""

    provider_id: str
    service: str
    start: int
    remaining: int


class CalendarChanged(NamedTuple):
    """A calendar was added, replaced, moved or removed: read it whole from its shard."""

    provider_id: str
    service: str


Change = SlotFree | CalendarChanged


class AvailabilityEntry(NamedTuple):
    """One committed shard batch's changes."""

    entry_id: str
    shard: str
    changes: list[Change]


def encode_entry(
    shard: str, slots: Iterable[tuple[str, str, int, int]], calendars: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """The fields of one stream entry: ``slots`` as (provider, service, start, remaining),
    ``calendars`` as (provider, service) to be read whole."""
    rows = [*slots, *((p, s, _WHOLE, _WHOLE) for p, s in calendars)]
    return {"shard": shard, "d": _encoder.encode(rows)}


def decode_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> AvailabilityEntry:
    """One stream entry as written by :func:`encode_entry`."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    changes: list[Change] = [
        CalendarChanged(p, s) if start == _WHOLE else SlotFree(p, s, start, free)
        for p, s, start, free in _decoder.decode(fields[b"d"])
    ]
    return AvailabilityEntry(eid, fields[b"shard"].decode(), changes)


def parse_entry_id(text: str) -> tuple[int, int] | None:
    """``(milliseconds, sequence)`` of a stream entry id such as ``1712-0``; ``None`` when
    it is not one Redis could have made (each part an unsigned 64-bit integer)."""
    m = _ENTRY_ID.fullmatch(text)
    if m is None:
        return None
    ms, seq = int(m.group(1)), int(m.group(2))
    return (ms, seq) if ms <= _MAX_PART and seq <= _MAX_PART else None


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a sortable pair (ids Redis gave; see :func:`parse_entry_id`)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _entries(reply: Any) -> list[AvailabilityEntry]:
    return [decode_entry(eid, fields) for _stream, rows in reply or [] for eid, fields in rows]


def read_availability(
    client: redis.Redis, after: str = "0-0", count: int = 1000, block_ms: int | None = None
) -> tuple[list[AvailabilityEntry], str]:
    """Up to ``count`` entries after entry id ``after``, and the id of the last one read
    (``after`` again when there was nothing new). ``block_ms`` waits that long for new
    entries when there are none."""
    entries = _entries(client.xread({AVAILABILITY_STREAM: after}, count=count, block=block_ms))
    return entries, entries[-1].entry_id if entries else after


class AvailabilityReader:
    """An asyncio reader of the stream with a Redis connection of its own, whose socket
    timeout outlasts its longest blocking read."""

    def __init__(self, redis_url: str, *, max_block_seconds: float = 30.0) -> None:
        self.max_block_seconds = max_block_seconds
        self.redis = aioredis.from_url(
            redis_url,
            socket_timeout=max_block_seconds + 5.0,
            socket_connect_timeout=5.0,
        )

    async def newest(self) -> str | None:
        """The id of the last entry, or ``None`` when the stream is empty."""
        last: Any = await self.redis.xrevrange(AVAILABILITY_STREAM, count=1)
        return last[0][0].decode() if last else None

    async def oldest(self) -> str | None:
        """The id of the first entry still kept, or ``None`` when the stream is empty."""
        first: Any = await self.redis.xrange(AVAILABILITY_STREAM, count=1)
        return first[0][0].decode() if first else None

    async def read(self, after: str, count: int, block_ms: int) -> list[AvailabilityEntry]:
        """Up to ``count`` entries after ``after``, waiting up to ``block_ms`` for one."""
        if block_ms > self.max_block_seconds * 1000:
            raise ValueError(f"block_ms {block_ms} outlasts the socket timeout of this reader")
        reply = await self.redis.xread({AVAILABILITY_STREAM: after}, count=count, block=block_ms)
        return _entries(reply)

    async def close(self) -> None:
        await self.redis.aclose()


class AvailabilityStreams:
    """The streams of several Redis servers read as one (the first: the deployment's
    Redis, then the servers shards journal to). Cursors: see the module's text."""

    def __init__(self, urls: list[str], *, max_block_seconds: float = 30.0) -> None:
        if not urls:
            raise ValueError("no Redis to read the availability stream from")
        self.urls = list(urls)
        self.readers = [AvailabilityReader(u, max_block_seconds=max_block_seconds) for u in urls]

    def parse(self, cursor: str) -> list[str] | None:
        """The per-stream ids of ``cursor``; ``None`` if it is not a cursor of these
        streams (malformed, or of another number of servers)."""
        parts = cursor.split(".")
        if len(parts) != len(self.readers) or any(parse_entry_id(p) is None for p in parts):
            return None
        return parts

    @staticmethod
    def join(ids: list[str]) -> str:
        return ".".join(ids)

    async def newest(self) -> list[str]:
        """Each stream's last entry id (``0-0`` for an empty one)."""
        return [await r.newest() or "0-0" for r in self.readers]

    async def oldest(self) -> list[str | None]:
        """Each stream's first entry id still kept (``None``: empty)."""
        return [await r.oldest() for r in self.readers]

    def follow(self, ids: list[str]) -> StreamsFollower:
        """A reader of every stream from ``ids`` on (:meth:`StreamsFollower.read`)."""
        return StreamsFollower(self, list(ids))

    async def close(self) -> None:
        for r in self.readers:
            await r.close()


class StreamsFollower:
    """Follows every stream of an :class:`AvailabilityStreams` at once: one blocking read
    per stream stays under way between calls, so an idle stream delays no other, and a
    stream whose Redis is away is tried again each ``retry_seconds`` while the others
    flow (:attr:`failing` says which and why)."""

    def __init__(
        self, streams: AvailabilityStreams, ids: list[str], retry_seconds: float = 1.0
    ) -> None:
        self.streams = streams
        self.ids = ids
        self.retry_seconds = retry_seconds
        self.failing: dict[str, BaseException] = {}  # server URL -> its last error
        self._reads: dict[int, asyncio.Task[list[AvailabilityEntry]]] = {}
        self._retry_at: dict[int, float] = {}

    @property
    def cursor(self) -> str:
        return AvailabilityStreams.join(self.ids)

    async def read(self, count: int, block_ms: int) -> list[tuple[AvailabilityEntry, str]]:
        """The entries that came (each with the cursor after it), waiting up to
        ``block_ms`` for one. With one stream its errors are raised (the caller retries);
        with several, a failing one is noted in :attr:`failing` and retried."""
        readers = self.streams.readers
        if len(readers) == 1:  # the plain case: no task needed
            entries = await readers[0].read(self.ids[0], count, block_ms)
            out = []
            for e in entries:
                self.ids[0] = e.entry_id
                out.append((e, e.entry_id))
            return out
        loop = asyncio.get_running_loop()
        now = loop.time()
        for i, reader in enumerate(readers):
            if i not in self._reads and self._retry_at.get(i, 0.0) <= now:
                self._reads[i] = loop.create_task(reader.read(self.ids[i], count, block_ms))
        if not self._reads:  # every stream away: wait for the first retry
            await asyncio.sleep(max(0.0, min(self._retry_at.values()) - now))
            return []
        done, _ = await asyncio.wait(
            self._reads.values(), timeout=block_ms / 1000, return_when=asyncio.FIRST_COMPLETED
        )
        out = []
        for i, task in sorted(self._reads.items()):
            if task not in done:
                continue
            del self._reads[i]
            url = self.streams.urls[i]
            if (exc := task.exception()) is not None:
                self.failing[url] = exc
                self._retry_at[i] = loop.time() + self.retry_seconds
                continue
            self.failing.pop(url, None)
            for e in task.result():
                self.ids[i] = e.entry_id
                out.append((e, self.cursor))
        return out

    async def close(self) -> None:
        await stop_tasks(self._reads.values())
        self._reads = {}


async def stop_tasks(
    tasks: Iterable[asyncio.Task[Any]], tries: int = 20, every: float = 0.5
) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again those that go on: a
    redis-py read can swallow a cancel (its socket-timeout context turns it into a
    timeout the caller retries; seen when a gateway stopped after its Redis restarted,
    and hung its shutdown for good). Gives up after ``tries`` rounds, saying which."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(tries):
        if not pending:
            return
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=every)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: an error of a task being stopped is no news
    for task in pending:
        log.error("a background task would not stop: %r", task)
