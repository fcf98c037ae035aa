"""``GET /v1/feed``: availability changes as server-sent events, resumable.

Each event is one entry of the availability stream (one committed shard batch): its
``id`` is the stream entry id, its ``data`` the changed slots with their free places.
A client that reconnects with ``Last-Event-ID`` (browsers' ``EventSource`` does this by
itself) or ``?after=`` gets every entry after that one, then live ones. When the entry
it asks for is older than the stream keeps, it gets one ``reset`` event: reload the
state (search, slots) and follow on from the id given. A comment line every 15 s keeps
idle connections open through proxies.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from actors.journal import AVAILABILITY_STREAM
from engine.errors import InvalidRequest, Unavailable
from gateway.auth import Caller
from gateway.settings import Settings

__all__ = ["router"]

_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_deltas = msgspec.msgpack.Decoder(list[tuple[str, str, int, int]])
KEEPALIVE_MS = 15_000


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _event(entry_id: str, fields: dict[bytes, bytes]) -> str:
    changes = [
        {"provider_id": p, "service": s, "calendar": "changed"}
        if start == -1
        else {"provider_id": p, "service": s, "start": _utc(start), "remaining": remaining}
        for p, s, start, remaining in _deltas.decode(fields[b"d"])
    ]
    data = json.dumps({"shard": fields[b"shard"].decode(), "changes": changes})
    return f"id: {entry_id}\nevent: availability\ndata: {data}\n\n"


def _older(a: str, b: str) -> bool:
    ams, aseq = map(int, a.split("-"))
    bms, bseq = map(int, b.split("-"))
    return (ams, aseq) < (bms, bseq)


def router(settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["search"])

    @api.get(
        "/feed",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def feed(
        request: Request,
        _: Caller,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=48)] = None,
        after: Annotated[str | None, Query(max_length=48)] = None,
    ) -> StreamingResponse:
        """Availability changes as server-sent events (``event: availability``), from now,
        or after ``Last-Event-ID`` / ``?after=`` when resuming."""
        resume = last_event_id or after
        if resume is not None and not _ID.match(resume):
            raise InvalidRequest("Last-Event-ID / after must be a feed event id like 1712-0")
        state = request.app.state
        if state.feed_clients >= settings.feed_max_clients:
            raise Unavailable(f"the feed serves {settings.feed_max_clients} clients at most")
        redis = state.index.redis
        try:
            head: Any = await redis.xrevrange(AVAILABILITY_STREAM, count=1)
            first: Any = await redis.xrange(AVAILABILITY_STREAM, count=1)
        except Exception as exc:
            raise Unavailable("the availability stream is unreachable; retry shortly") from exc
        newest = head[0][0].decode() if head else "0-0"
        oldest = first[0][0].decode() if first else None

        async def events() -> AsyncIterator[str]:
            state.feed_clients += 1
            state.metrics.feed_clients.inc()
            try:
                cursor = resume or newest
                if resume is not None and oldest is not None and _older(resume, oldest):
                    # Entries after ``resume`` were trimmed: the client must reload.
                    cursor = newest
                    yield f"id: {newest}\nevent: reset\ndata: {{}}\n\n"
                yield "retry: 2000\n\n"
                while True:
                    reply: Any = await redis.xread(
                        {AVAILABILITY_STREAM: cursor}, count=200, block=KEEPALIVE_MS
                    )
                    if not reply:
                        yield ": keep-alive\n\n"
                        continue
                    for _stream, rows in reply:
                        for entry_id, fields in rows:
                            cursor = entry_id.decode()
                            yield _event(cursor, fields)
            finally:
                state.feed_clients -= 1
                state.metrics.feed_clients.dec()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return api
