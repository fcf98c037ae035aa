"""``GET /v1/feed``: availability changes as server-sent events, resumable.

Each event is one entry of the availability stream (one committed shard batch): its
``id`` is the stream's cursor after it (the stream entry id; with shards journaling to
several Redis servers, every stream's id joined by ``.``, see :mod:`actors.availability`),
its ``data`` the changed slots with their free places.
A client that reconnects with ``Last-Event-ID`` (browsers' ``EventSource`` does this by
itself) or ``?after=`` gets every entry after that one, then live ones. When the id it
gives is older than the stream keeps, or newer than its newest entry (another
deployment's, or a Redis that was reset), it gets one ``reset`` event: reload the state
(search, slots) and follow on from the id given. A comment line every
``feed_keepalive_seconds`` (15) keeps idle connections open through proxies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from actors.availability import AvailabilityEntry, SlotFree, entry_id_key
from engine.errors import InvalidRequest, Unavailable
from gateway.deps import Caller, Runtime, RuntimeDep
from gateway.openapi import ANONYMOUS, event_stream
from gateway.schemas import FEED_CURSOR_PATTERN, FeedQuery

router = APIRouter(prefix="/v1", tags=["search"])
_CHANGE: dict[str, Any] = {
    "type": "object",
    "required": ["provider_id", "service"],
    "properties": {
        "provider_id": {"type": "string"},
        "service": {"type": "string"},
        "start": {"type": "string", "format": "date-time"},
        "remaining": {"type": "integer", "minimum": 0},
        "calendar": {"type": "string", "enum": ["changed"]},
    },
}
# ``availability``: a shard's committed changes; ``reset``: ``{}``, reload and follow on.
_STREAM = event_stream(
    ["availability", "reset"],
    {
        "type": "object",
        "properties": {
            "shard": {"type": "integer", "minimum": 0},
            "changes": {"type": "array", "items": _CHANGE},
        },
    },
)


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _event(entry: AvailabilityEntry, cursor: str) -> str:
    changes = [
        {"provider_id": c.provider_id, "service": c.service, "start": _utc(c.start),
         "remaining": c.remaining}
        if isinstance(c, SlotFree)
        else {"provider_id": c.provider_id, "service": c.service, "calendar": "changed"}
        for c in entry.changes
    ]  # fmt: skip
    data = json.dumps({"shard": entry.shard, "changes": changes})
    return f"id: {cursor}\nevent: availability\ndata: {data}\n\n"


async def _events(
    rt: Runtime, resume: list[str] | None, newest: list[str], oldest: list[str | None]
) -> AsyncIterator[str]:
    rt.feed_clients += 1
    rt.metrics.feed_clients.inc()
    keepalive_ms = int(rt.settings.feed_keepalive_seconds * 1000)
    # Entries after ``resume`` were trimmed, or never were: the client must reload.
    reset = resume is not None and any(
        (old is not None and entry_id_key(mine) < entry_id_key(old))
        or entry_id_key(mine) > entry_id_key(new)
        for mine, old, new in zip(resume, oldest, newest, strict=True)
    )
    follower = rt.stream.follow(newest if reset or resume is None else resume)
    try:
        if reset:
            yield f"id: {follower.cursor}\nevent: reset\ndata: {{}}\n\n"
        yield "retry: 2000\n\n"
        while True:
            try:
                entries = await follower.read(count=200, block_ms=keepalive_ms)
            except RedisError:
                return  # the client reconnects with Last-Event-ID and misses nothing
            if not entries:
                yield ": keep-alive\n\n"
            for entry, cursor in entries:
                yield _event(entry, cursor)
    finally:
        await follower.close()
        rt.feed_clients -= 1
        rt.metrics.feed_clients.dec()


@router.get("/feed", response_class=StreamingResponse, responses=_STREAM, openapi_extra=ANONYMOUS)
async def feed(
    q: Annotated[FeedQuery, Query()],
    _: Caller,
    rt: RuntimeDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=FEED_CURSOR_PATTERN)
    ] = None,
) -> StreamingResponse:
    """Availability changes as server-sent events (``event: availability``), from now,
    or after ``Last-Event-ID`` / ``?after=`` when resuming."""
    given = last_event_id or q.after
    resume = None if given is None else rt.stream.parse(given)
    if given is not None and resume is None:
        example = rt.stream.join(["1712-0"] * len(rt.stream.readers))
        raise InvalidRequest(
            f"Last-Event-ID / after must be an event id of this feed, like {example}"
        )
    if rt.feed_clients >= rt.settings.feed_max_clients:
        raise Unavailable(f"the feed serves {rt.settings.feed_max_clients} clients at most")
    try:
        newest = await rt.stream.newest()
        oldest = await rt.stream.oldest()
    except RedisError as exc:
        raise Unavailable("the availability stream is unreachable; retry shortly") from exc
    return StreamingResponse(
        _events(rt, resume, newest, oldest),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
