"""``/v1/rooms``: launch-day waiting rooms. Operators open, pause, resume, re-rate and
close them; visitors join, then poll (or follow by SSE) until admitted or told their
area is sold out. See :mod:`gateway.room` and docs/api.md ("A launch through the room")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from engine.errors import HexbookError
from gateway.answers import json_answer
from gateway.auth import Principal
from gateway.deps import Caller, Operator, RuntimeDep, Service, json_body
from gateway.openapi import ANONYMOUS, errors, event_stream
from gateway.room import POLL_SECONDS, RoomState, WaitingRooms, visitor_answer
from gateway.schemas import (
    ID_PATTERN,
    VISITOR_PATTERN,
    JoinIn,
    LotteryOut,
    RoomIn,
    RoomOut,
    RoomPatch,
    VisitorOut,
)

router = APIRouter(prefix="/v1/rooms", tags=["waiting room"])
RoomId = Path(pattern=ID_PATTERN, max_length=128)
VisitorId = Path(pattern=VISITOR_PATTERN, max_length=128)
_STREAM = event_stream(["visitor"], {"$ref": "#/components/schemas/VisitorOut"})


def room_out(room: RoomState) -> dict[str, Any]:
    spec = {**room.spec, "seed": room.seed if room.drawn else None}
    spec["opens_at"] = datetime.fromtimestamp(room.spec["opens_at"], UTC).isoformat()
    c = room.counts
    return {
        **spec,
        "state": room.state,
        "drawn": room.drawn,
        "rate_per_minute": round(room.rate if room.state == "open" else 0.0, 1),
        "waiting": c["waiting"],
        "pre_queue": c["pre_queue"],
        "joined": c["joined"],
        "admitted": c["admitted"],
        "holding": c["holding"],
        "expired": c["expired"],
        "sold_out": c["sold_out"],
        "sold_out_areas": room.sold_out_areas,
    }


def _rooms(service: Service) -> WaitingRooms:
    return service.rooms


@router.post(
    "",
    status_code=201,
    response_model=RoomOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 409),
)
async def create_room(body: RoomIn, caller: Operator, service: Service) -> Response:
    """Open a waiting room for a launch. Until ``opens_at`` arrivals wait in a pre-queue;
    at the opening a seeded lottery orders it (``GET .../lottery``) and later arrivals
    join at the back. From now until it is closed, holds of ``service`` at providers
    within ``radius_km`` need an admission of this room."""
    return json_answer(room_out(await _rooms(service).create(body)), 201)


@router.get("", response_model=list[RoomOut], responses=errors(403))
async def list_rooms(caller: Operator, service: Service) -> Response:
    """Every room, closed ones too, with its counts."""
    return json_answer([room_out(r) for r in await _rooms(service).all()])


@router.get("/{room_id}", response_model=RoomOut, responses=errors(403, 404))
async def get_room(caller: Operator, service: Service, room_id: str = RoomId) -> Response:
    """A room's state and counts (the same figures as ``/metrics``)."""
    return json_answer(room_out(await _rooms(service).read(room_id)))


@router.patch(
    "/{room_id}",
    response_model=RoomOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 409),
)
async def change_room(
    body: RoomPatch, caller: Operator, service: Service, room_id: str = RoomId
) -> Response:
    """Pause (``state: paused``: nobody more is admitted, admissions given keep running),
    resume (``open``), close (``closed``: holds need no admission any more; final), or
    change the admission rate (``per_minute``)."""
    return json_answer(room_out(await _rooms(service).change(room_id, body)))


@router.get("/{room_id}/lottery", response_model=LotteryOut, responses=errors(403, 404, 422))
async def get_lottery(caller: Operator, service: Service, room_id: str = RoomId) -> Response:
    """The pre-queue's draw: its seed and order. ``engine.room.lottery(seed, order)``
    draws the same order again from the seed and the entrants."""
    seed, order = await _rooms(service).lottery_of(room_id)
    return json_answer({"room_id": room_id, "seed": seed, "order": order})


@router.post(
    "/{room_id}/visitors",
    status_code=201,
    response_model=VisitorOut,
    dependencies=[Depends(json_body)],
    responses={200: {"model": VisitorOut}, **errors(404, 409)},
    openapi_extra=ANONYMOUS,
)
async def join(body: JoinIn, caller: Caller, service: Service, room_id: str = RoomId) -> Response:
    """Join the queue for the places near ``lat``/``lng`` (201). Joining again as the same
    visitor from the same caller keeps the place (200). One place per visitor id, API
    key and address (as the room's ``one_per`` says); a second is 409 ``already_queued``."""
    rooms = _rooms(service)
    new, view = await rooms.join(room_id, caller, body)
    return visitor_answer(view, 201 if new else 200)


@router.get(
    "/{room_id}/visitors/{visitor_id}",
    response_model=VisitorOut,
    responses=errors(404),
    openapi_extra=ANONYMOUS,
)
async def visitor(
    caller: Caller, service: Service, room_id: str = RoomId, visitor_id: str = VisitorId
) -> Response:
    """Where a visitor stands: position, people ahead, estimated wait, places near them;
    once admitted, the ``admission`` for holds (shown to the caller that joined only).
    Poll every few seconds (the answer may be reused for ``max-age``) or follow
    ``.../events``."""
    return visitor_answer(await _rooms(service).visitor(room_id, visitor_id, caller))


async def _events(
    rooms: WaitingRooms, room_id: str, visitor_id: str, caller: Principal, keepalive: float
) -> AsyncIterator[str]:
    last: str | None = None
    quiet = 0.0
    yield f"retry: {POLL_SECONDS * 1000}\n\n"
    while True:
        try:
            out = await rooms.visitor(room_id, visitor_id, caller)
        except (RedisError, HexbookError):
            return  # the client reconnects
        data = json.dumps(out, separators=(",", ":"))
        if data != last:
            last, quiet = data, 0.0
            yield f"event: visitor\ndata: {data}\n\n"
            if out["status"] not in ("pre-queue", "waiting"):
                return  # nothing more to wait for
        elif quiet >= keepalive:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(1.0)
        quiet += 1.0


@router.get(
    "/{room_id}/visitors/{visitor_id}/events",
    response_class=StreamingResponse,
    responses={**_STREAM, **errors(404)},
    openapi_extra=ANONYMOUS,
)
async def visitor_events(
    caller: Caller, rt: RuntimeDep, room_id: str = RoomId, visitor_id: str = VisitorId
) -> StreamingResponse:
    """The visitor view as server-sent events (``event: visitor``), one each time it
    changes, ending once the visitor is admitted, sold out or expired."""
    rooms = rt.service.rooms
    await rooms.visitor(room_id, visitor_id, caller)  # 404 before the stream starts
    return StreamingResponse(
        _events(rooms, room_id, visitor_id, caller, rt.settings.feed_keepalive_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
