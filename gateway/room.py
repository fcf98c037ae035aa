"""Launch-day waiting rooms, shared by every gateway through Redis.

A room queues the visitors of one launch (a service in an area) and admits them at a
rate, only while there are places near them (:mod:`engine.room` decides; this module
keeps the state and runs the ticks). Everything lives in Redis under
``hexbook:room:{<id>}`` (one hash tag, so a room's keys stay together), written by Lua
scripts, each one atomic: a gateway that restarts, or a second gateway, sees every
position as it was.

    hexbook:rooms                    set of room ids
    hexbook:room:{r}                 hash: spec, state, drawn, seed, rate, bucket, counts
    hexbook:room:{r}:pre             zset: pre-queue (visitor -> arrival)
    hexbook:room:{r}:q               zset: the queue (visitor -> ticket), head first
    hexbook:room:{r}:v               hash: visitor -> record (area, caller, status, ...)
    hexbook:room:{r}:by              hash: visitor / key / address -> visitor (one place each)
    hexbook:room:{r}:areas           hash: area -> visitors waiting for it
    hexbook:room:{r}:area:<cell>     set: the visitors waiting for that area
    hexbook:room:{r}:soldout         set: areas told sold out
    hexbook:room:{r}:active          hash: area -> admitted visitors holding nothing yet
    hexbook:room:{r}:sessions        zset: admitted visitor -> admission expiry
    hexbook:room:{r}:lottery         list: the pre-queue in its drawn order

Every gateway runs :meth:`WaitingRooms.run`: each tick it reads the rooms (for the hold
gate and the visitor view) and the places near each waiting area from its own index;
the one holding the room's lock (a Redis key with a short expiry, taken over when its
holder stops) also draws the lottery at the opening, ends admissions that ran out, and
admits. An admission is a signed token bound to the caller that joined; it buys one hold.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import h3
import numpy as np
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge
from starlette.responses import Response

from engine.errors import (
    AdmissionRequired,
    AdmissionSpent,
    AlreadyQueued,
    InvalidRequest,
    RoomClosed,
    RoomExists,
    RoomNotFound,
)
from engine.geo import haversine_km
from engine.provider import Provider
from engine.room import RoomPolicy, Waiting, decide, estimated_wait_seconds, lottery, next_rate
from engine.room import refill as refill_bucket
from gateway.answers import json_answer

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.index import AvailabilityIndex
    from gateway.schemas import JoinIn, RoomIn, RoomPatch

__all__ = ["ROOMS_KEY", "RoomState", "WaitingRooms", "poll_after", "visitor_answer"]

log = logging.getLogger("hexbook.gateway")
ROOMS_KEY = "hexbook:rooms"
SHED_KEY = "hexbook:rooms:shed"


def room_key(room_id: str) -> str:
    return f"hexbook:room:{{{room_id}}}"


# KEYS: room, v, by, pre, q, areas, soldout.
# ARGV: visitor, area, record, now, opens_at, dedup keys...
_JOIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state == 'closed' then return {'closed'} end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local rec = cjson.decode(old)
  if rec.c ~= cjson.decode(ARGV[3]).c then return {'taken', 'visitor'} end
  return {'again', old, redis.call('ZRANK', KEYS[5], ARGV[1])}
end
for i = 6, #ARGV do
  local owner = redis.call('HGET', KEYS[3], ARGV[i])
  if owner and owner ~= ARGV[1] then return {'taken', ARGV[i]} end
end
for i = 6, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], ARGV[1]) end
local rec = cjson.decode(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'joined', 1)
if redis.call('SISMEMBER', KEYS[7], ARGV[2]) == 1 then
  rec.s = 'sold_out'
  redis.call('HINCRBY', KEYS[1], 'sold_out', 1)
elseif tonumber(ARGV[4]) >= tonumber(ARGV[5]) or redis.call('HGET', KEYS[1], 'drawn') == '1' then
  -- after the opening: behind the whole pre-queue, whenever its lottery is drawn
  local t = redis.call('HINCRBY', KEYS[1], 'tickets', 1)
  redis.call('ZADD', KEYS[5], 1e12 + t, ARGV[1])
  redis.call('HINCRBY', KEYS[6], ARGV[2], 1)
  redis.call('SADD', KEYS[1] .. ':area:' .. ARGV[2], ARGV[1])
  rec.s = 'waiting'
else
  local n = redis.call('HINCRBY', KEYS[1], 'arrivals', 1)
  redis.call('ZADD', KEYS[4], n, ARGV[1])
  rec.s = 'pre-queue'
end
local out = cjson.encode(rec)
redis.call('HSET', KEYS[2], ARGV[1], out)
return {'new', out, redis.call('ZRANK', KEYS[5], ARGV[1])}
"""

# KEYS: room, pre, q, v, lottery, areas. ARGV: seed, order...
_DRAW = """
if redis.call('HGET', KEYS[1], 'drawn') == '1' then return -1 end
if redis.call('ZCARD', KEYS[2]) ~= #ARGV - 1 then return -2 end
for i = 2, #ARGV do
  local v = ARGV[i]
  local rec = cjson.decode(redis.call('HGET', KEYS[4], v))
  rec.s = 'waiting'
  redis.call('HSET', KEYS[4], v, cjson.encode(rec))
  redis.call('ZADD', KEYS[3], i - 1, v)
  redis.call('HINCRBY', KEYS[6], rec.a, 1)
  redis.call('SADD', KEYS[1] .. ':area:' .. rec.a, v)
  redis.call('RPUSH', KEYS[5], v)
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'drawn', '1', 'seed', ARGV[1])
if redis.call('HGET', KEYS[1], 'state') == 'scheduled' then
  redis.call('HSET', KEYS[1], 'state', 'open')
end
return #ARGV - 1
"""

# KEYS: room, q, v, sessions, active, areas. ARGV: expires, visitors...
_ADMIT = """
local n = 0
for i = 2, #ARGV do
  local v = ARGV[i]
  local raw = redis.call('HGET', KEYS[3], v)
  if raw then
    local rec = cjson.decode(raw)
    if rec.s == 'waiting' then
      rec.s = 'admitted'
      rec.e = tonumber(ARGV[1])
      redis.call('HSET', KEYS[3], v, cjson.encode(rec))
      redis.call('ZREM', KEYS[2], v)
      redis.call('ZADD', KEYS[4], ARGV[1], v)
      redis.call('HINCRBY', KEYS[5], rec.a, 1)
      if redis.call('HINCRBY', KEYS[6], rec.a, -1) <= 0 then redis.call('HDEL', KEYS[6], rec.a) end
      redis.call('SREM', KEYS[1] .. ':area:' .. rec.a, v)
      n = n + 1
    end
  end
end
redis.call('HINCRBY', KEYS[1], 'admitted', n)
return n
"""

# KEYS: room, q, v, soldout, areas. ARGV: area
_SOLD_OUT = """
redis.call('SADD', KEYS[4], ARGV[1])
local set = KEYS[1] .. ':area:' .. ARGV[1]
local members = redis.call('SMEMBERS', set)
for _, v in ipairs(members) do
  local rec = cjson.decode(redis.call('HGET', KEYS[3], v))
  rec.s = 'sold_out'
  redis.call('HSET', KEYS[3], v, cjson.encode(rec))
  redis.call('ZREM', KEYS[2], v)
end
redis.call('DEL', set)
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'sold_out', #members)
return #members
"""

# KEYS: room, v, sessions, active. ARGV: now
_EXPIRE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
local n = 0
for _, v in ipairs(gone) do
  local rec = cjson.decode(redis.call('HGET', KEYS[2], v))
  if rec.s == 'admitted' and not rec.p then
    rec.s = 'expired'
    redis.call('HSET', KEYS[2], v, cjson.encode(rec))
    if redis.call('HINCRBY', KEYS[4], rec.a, -1) <= 0 then redis.call('HDEL', KEYS[4], rec.a) end
    n = n + 1
  end
  if not rec.p then redis.call('ZREM', KEYS[3], v) end
end
redis.call('HINCRBY', KEYS[1], 'expired', n)
return n
"""

# KEYS: v. ARGV: visitor, now, hold key. -> ok | again | spent | pending | expired | unknown
_SPEND = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 'unknown' end
local rec = cjson.decode(raw)
if rec.s == 'holding' then
  if rec.k == ARGV[3] then return 'again' end
  return 'spent'
end
if rec.s ~= 'admitted' then return rec.s end
if rec.p then return 'pending' end
if rec.e < tonumber(ARGV[2]) then return 'expired' end
rec.p = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
return 'ok'
"""

# KEYS: room, v, sessions, active. ARGV: visitor, held (1/0)
_SPENT = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if not rec.p then return 0 end
if ARGV[2] == '1' then
  rec.s = 'holding'
  rec.k = rec.p
  redis.call('ZREM', KEYS[3], ARGV[1])
  if redis.call('HINCRBY', KEYS[4], rec.a, -1) <= 0 then redis.call('HDEL', KEYS[4], rec.a) end
  redis.call('HINCRBY', KEYS[1], 'holding', 1)
end
rec.p = nil
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(rec))
return 1
"""


@dataclass(slots=True)
class RoomState:
    """A room as a gateway last read it."""

    room_id: str
    spec: dict[str, Any]
    state: str
    policy: RoomPolicy
    counts: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0
    drawn: bool = False
    seed: int | None = None
    places: dict[str, int] = field(default_factory=dict)  # area -> places near it
    sold_out_areas: list[str] = field(default_factory=list)

    def covers(self, provider: Provider, service: str) -> bool:
        if service != self.spec["service"] or self.state == "closed":
            return False
        d = haversine_km(
            self.spec["lat"], self.spec["lng"], np.array([provider.lat]), np.array([provider.lng])
        )
        return bool(d[0] <= self.spec["radius_km"])


def _policy(spec: dict[str, Any]) -> RoomPolicy:
    return RoomPolicy(
        per_minute=spec["per_minute"],
        session_seconds=spec["session_seconds"],
        margin=spec["margin"],
        near_km=spec["near_km"],
        resolution=spec["resolution"],
    )


_NO_ROOM: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
POLL_SECONDS = 2  # what the visitor view's Cache-Control lets a client (or proxy) reuse


def visitor_answer(out: dict[str, Any], status: int = 200) -> Response:
    """The visitor view as an answer, the same from the route and the fast path."""
    response = json_answer(out, status)
    response.raw_headers.append(
        (b"cache-control", f"private, max-age={POLL_SECONDS}".encode("latin-1"))
    )
    return response


def poll_after(wait: float | None) -> int:
    """When a waiting visitor should ask again: a third of the wait left, 2 to 60 s (the
    crowd at the back asks rarely, the head often; paused: 60 s)."""
    if wait is None:
        return 60
    return int(min(60, max(2, wait / 3)))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RoomMetrics:
    """The rooms' figures in ``/metrics``: one series per room."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def g(name: str, doc: str) -> Gauge:
            return Gauge(f"hexbook_room_{name}", doc, ["room"], registry=registry)

        self.waiting = g("waiting", "visitors in the queue")
        self.pre_queue = g("pre_queue", "visitors in the pre-queue (before the opening)")
        self.admitted = g("admitted", "visitors admitted so far")
        self.admitted_per_minute = g("admitted_per_minute", "admissions in the last minute")
        self.holding = g("holding", "admitted visitors who hold a place")
        self.abandoned = g("abandoned", "admissions that ran out with no hold")
        self.sold_out = g("sold_out", "visitors told their area is sold out")
        self.sold_out_areas = g("sold_out_areas", "areas with nothing left")
        self.rate = g("rate_per_minute", "the admission rate now")
        self.open = g("open", "1 while the room admits, 0 paused or scheduled")


class WaitingRooms:
    """Every room of the deployment: the operator's verbs, the visitor's, the hold gate,
    and the tick that every gateway runs."""

    def __init__(
        self,
        redis_client: aioredis.Redis,
        index: AvailabilityIndex,
        now: Any,
        secret: bytes,
        registry: CollectorRegistry,
        shed: Any,
        tick_seconds: float = 0.5,
        ticker: aioredis.Redis | None = None,
    ) -> None:
        self.redis: Any = redis_client  # redis-py types its answers loosely
        # The tick's own connection: a crowd that takes every pooled connection must not
        # stop the room from admitting (nor from telling who is sold out).
        self.ticker: Any = ticker or redis_client
        self.index = index
        self.now = now  # the stack's clock: () -> float UTC seconds
        self.secret = hmac.new(secret, b"hexbook admission", hashlib.sha256).digest()
        self.shed = shed  # () -> this gateway's 503 answers so far
        self.tick_seconds = tick_seconds
        self.rooms: dict[str, RoomState] = {}
        self.metrics = RoomMetrics(registry)
        self.me = uuid.uuid4().hex
        self._shed_seen = 0.0
        self._admits: dict[str, deque[tuple[float, int]]] = {}
        self._rows: dict[str, tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._join = redis_client.register_script(_JOIN)
        self._draw = redis_client.register_script(_DRAW)
        self._admit = redis_client.register_script(_ADMIT)
        self._sold_out = redis_client.register_script(_SOLD_OUT)
        self._expire = redis_client.register_script(_EXPIRE)
        self._spend = redis_client.register_script(_SPEND)
        self._spent = redis_client.register_script(_SPENT)

    # --- operators ---------------------------------------------------------------

    async def create(self, body: RoomIn) -> RoomState:
        spec = body.model_dump(mode="json")
        _policy(spec)  # the engine's checks
        k = room_key(body.room_id)
        fresh = await self.redis.hsetnx(k, "spec", json.dumps(spec))
        if not fresh:
            raise RoomExists(f"room {body.room_id!r} exists already; choose another id")
        await self.redis.hset(
            k, mapping={"state": "scheduled", "rate": str(float(body.per_minute)), "bucket": "0"}
        )
        await self.redis.sadd(ROOMS_KEY, body.room_id)
        return await self.read(body.room_id)

    async def change(self, room_id: str, patch: RoomPatch) -> RoomState:
        room = await self.read(room_id)
        k = room_key(room_id)
        if room.state == "closed":
            raise RoomClosed(f"room {room_id!r} is closed")
        if patch.per_minute is not None:
            spec = {**room.spec, "per_minute": patch.per_minute}
            await self.redis.hset(
                k,
                mapping={
                    "spec": json.dumps(spec),
                    "rate": str(float(min(room.rate or patch.per_minute, patch.per_minute))),
                },
            )
        if patch.state is not None:
            if patch.state in ("open", "paused") and not room.drawn:
                # before the opening: the room stays scheduled, a pause is kept for later
                await self.redis.hset(k, "hold", "1" if patch.state == "paused" else "0")
            else:
                await self.redis.hset(k, "state", patch.state)
        return await self.read(room_id)

    async def read(self, room_id: str, client: Any = None) -> RoomState:
        """A room as it is in Redis now, its counts included."""
        k = room_key(room_id)
        async with (client or self.redis).pipeline(transaction=False) as p:
            p.hgetall(k)
            p.zcard(f"{k}:q")
            p.zcard(f"{k}:pre")
            p.smembers(f"{k}:soldout")
            raw, waiting, pre, sold = await p.execute()
        if not raw:
            raise RoomNotFound(f"no waiting room {room_id!r}")
        h = {a.decode(): b.decode() for a, b in raw.items()}
        spec = json.loads(h["spec"])
        counts = {c: int(h.get(c, 0)) for c in ("joined", "admitted", "holding", "expired")}
        counts |= {"sold_out": int(h.get("sold_out", 0)), "waiting": waiting, "pre_queue": pre}
        old = self.rooms.get(room_id)
        room = RoomState(
            room_id,
            spec,
            h.get("state", "scheduled"),
            _policy(spec),
            counts,
            float(h.get("rate", spec["per_minute"])),
            h.get("drawn") == "1",
            int(h["seed"]) if "seed" in h else None,
            old.places if old else {},
            sorted(s.decode() for s in sold),
        )
        self.rooms[room_id] = room
        return room

    async def lottery_of(self, room_id: str) -> tuple[int, list[str]]:
        room = await self.read(room_id)
        if not room.drawn or room.seed is None:
            raise InvalidRequest(f"room {room_id!r} draws its lottery at its opening")
        order = await self.redis.lrange(f"{room_key(room_id)}:lottery", 0, -1)
        return room.seed, [v.decode() for v in order]

    async def all(self) -> list[RoomState]:
        ids = sorted(v.decode() for v in await self.redis.smembers(ROOMS_KEY))
        out = []
        for rid in ids:
            with contextlib.suppress(RoomNotFound):
                out.append(await self.read(rid))
        return out

    # --- visitors ----------------------------------------------------------------

    def area_of(self, room: RoomState, lat: float, lng: float) -> str:
        return str(h3.latlng_to_cell(lat, lng, room.policy.resolution))

    async def join(
        self, room_id: str, caller: Principal, body: JoinIn
    ) -> tuple[bool, dict[str, Any]]:
        """Queue a visitor (a pre-queue place before the opening): ``(new, the visitor
        view)``. The same visitor joining again from the same caller keeps its place."""
        room = self.rooms.get(room_id) or await self.read(room_id)
        visitor = body.visitor_id or uuid.uuid4().hex
        area = self.area_of(room, body.lat, body.lng)
        record = {"a": area, "c": caller.name, "j": self.now()}
        dedup = [f"visitor:{visitor}"]
        one_per = room.spec["one_per"]
        if "key" in one_per and caller.key is not None:
            dedup.append(f"key:{caller.key.key_id}")
        if "address" in one_per:
            dedup.append(f"addr:{caller.address}")
        k = room_key(room_id)
        keys = [k, f"{k}:v", f"{k}:by", f"{k}:pre", f"{k}:q", f"{k}:areas", f"{k}:soldout"]
        args = [visitor, area, json.dumps(record), self.now(), room.spec["opens_at"], *dedup]
        out = await self._join(keys, args)
        what = out[0].decode()
        if what == "missing":
            raise RoomNotFound(f"no waiting room {room_id!r}")
        if what == "closed":
            raise RoomClosed(f"room {room_id!r} is closed; it queues nobody any more")
        if what == "taken":
            by = out[1].decode().split(":", 1)[0]
            which = {"visitor": "visitor id", "key": "API key", "addr": "address"}[by]
            raise AlreadyQueued(f"this {which} has a place in room {room_id!r} already")
        rank = out[2] if len(out) > 2 else None
        return what == "new", self._view(room, visitor, json.loads(out[1]), rank, caller)

    async def visitor(self, room_id: str, visitor: str, caller: Principal) -> dict[str, Any]:
        """What a visitor sees: the VisitorOut of the contract."""
        room = self.rooms.get(room_id) or await self.read(room_id)
        k = room_key(room_id)
        async with self.redis.pipeline(transaction=False) as p:
            p.hget(f"{k}:v", visitor)
            p.zrank(f"{k}:q", visitor)
            raw, rank = await p.execute()
        if raw is None:
            raise RoomNotFound(f"no visitor {visitor!r} in room {room_id!r}")
        return self._view(room, visitor, json.loads(raw), rank, caller)

    def _view(
        self,
        room: RoomState,
        visitor: str,
        rec: dict[str, Any],
        rank: int | None,
        caller: Principal,
    ) -> dict[str, Any]:
        room_id = room.room_id
        status = rec["s"]
        places = room.places.get(rec["a"])
        if places is None:  # an area nobody waited for at the last tick (a pre-queue's)
            places = room.places[rec["a"]] = self._places(room, [rec["a"]])[rec["a"]]
        out: dict[str, Any] = {
            "room_id": room_id,
            "visitor_id": visitor,
            "status": status,
            "position": None,
            "ahead": None,
            "estimated_wait_seconds": None,
            "places_near": places,
            "near_km": room.policy.near_km,
            "admission": None,
            "admission_expires_at": None,
            "poll_after_seconds": None,
        }
        near = f"within {room.policy.near_km:g} km"
        if status == "waiting" and rank is not None:
            rate = room.rate if room.state == "open" else 0.0
            wait = estimated_wait_seconds(rank, rate)
            out |= {"position": rank + 1, "ahead": rank, "estimated_wait_seconds": wait,
                    "poll_after_seconds": poll_after(wait)}  # fmt: skip
            out["message"] = (
                f"{rank} people ahead of you; {places} places left {near}"
                if room.state == "open"
                else f"the room is paused; {rank} people ahead of you"
            )
        elif status == "pre-queue":
            opens = datetime.fromtimestamp(room.spec["opens_at"], UTC).isoformat()
            out["poll_after_seconds"] = poll_after(room.spec["opens_at"] - self.now())
            out["message"] = f"you are in the pre-queue; a lottery orders it at {opens}"
        elif status == "admitted":
            expires = int(rec["e"])
            out["admission_expires_at"] = datetime.fromtimestamp(expires, UTC).isoformat()
            out["message"] = f"it is your turn: hold a place {near} before your admission ends"
            if rec["c"] == caller.name:  # the token is given to the caller that joined only
                out["admission"] = self.token(room_id, visitor, caller.name, expires)
        elif status == "holding":
            out["message"] = "you hold a place: confirm it before the hold ends"
        elif status == "sold_out":
            out["places_near"] = 0
            out["message"] = f"nothing left {near}: join the waitlist instead of waiting"
        else:
            out["message"] = "your admission ran out before you held a place"
        return out

    # --- admissions ----------------------------------------------------------------

    def token(self, room_id: str, visitor: str, caller: str, expires: int) -> str:
        payload = json.dumps([room_id, visitor, caller, expires], separators=(",", ":")).encode()
        mac = hmac.new(self.secret, payload, hashlib.sha256).digest()[:20]
        return f"{_b64(payload)}.{_b64(mac)}"

    def _verify(self, token: str, caller: str) -> tuple[str, str, int] | str:
        """(room, visitor, expiry) of a valid token of ``caller``; else why not."""
        try:
            head, _, sig = token.partition(".")
            payload = _unb64(head)
            room_id, visitor, bound, expires = json.loads(payload)
            good = hmac.compare_digest(
                _unb64(sig), hmac.new(self.secret, payload, hashlib.sha256).digest()[:20]
            )
        except (ValueError, TypeError):
            return "the admission is not one this deployment issued"
        if not good:
            return "the admission is not one this deployment issued"
        if bound != caller:
            return "the admission was given to another caller"
        if expires < self.now():
            return "the admission has run out"
        return str(room_id), str(visitor), int(expires)

    def room_for(self, provider: Provider, service: str) -> RoomState | None:
        for room in self.rooms.values():
            if room.covers(provider, service):
                return room
        return None

    def admission(
        self, caller: Principal, provider: Provider, service: str, token: str | None, key: str
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Around a hold: while a room covers ``provider``'s ``service``, the hold needs a
        valid admission of it, which it spends (a hold refused leaves it unspent). Where
        no room covers it, nothing: a shared no-op, not a generator per hold (most holds
        of a launch are at sites without a room)."""
        room = self.room_for(provider, service)
        if room is None:
            return _NO_ROOM
        return self._admitted(room, caller, provider, service, token, key)

    @contextlib.asynccontextmanager
    async def _admitted(
        self,
        room: RoomState,
        caller: Principal,
        provider: Provider,
        service: str,
        token: str | None,
        key: str,
    ) -> AsyncIterator[None]:
        if token is None:
            raise AdmissionRequired(room.room_id, "holds here need an admission")
        checked = self._verify(token, caller.name)
        if isinstance(checked, str):
            raise AdmissionRequired(room.room_id, checked)
        room_id, visitor, _ = checked
        if room_id not in self.rooms or not self.rooms[room_id].covers(provider, service):
            raise AdmissionRequired(room.room_id, f"the admission is for room {room_id!r}")
        k = room_key(room_id)
        got = (await self._spend([f"{k}:v"], [visitor, self.now(), key])).decode()
        if got == "again":  # the same hold asked again (same Idempotency-Key)
            yield
            return
        if got in ("spent", "pending"):
            raise AdmissionSpent(
                "this admission holds a place already"
                if got == "spent"
                else "this admission is placing a hold right now"
            )
        if got != "ok":
            raise AdmissionRequired(room_id, f"the admission is {got.replace('_', ' ')}")
        keys = [k, f"{k}:v", f"{k}:sessions", f"{k}:active"]
        try:
            yield
        except BaseException:
            await self._spent(keys, [visitor, "0"])
            raise
        await self._spent(keys, [visitor, "1"])

    # --- the tick ------------------------------------------------------------------

    def _places(self, room: RoomState, areas: list[str]) -> dict[str, int]:
        """Places near each area, from the index's free places per calendar: summed over
        the window once a tick per service (a sum over every slot of every calendar)."""
        service, now = room.spec["service"], time.monotonic()
        cached = self._rows.get(service)
        if cached is None or cached[0] < now:
            rows = self.index.places_rows(service, int(self.now()))
            cached = (now + self.tick_seconds, rows)
            self._rows[service] = cached
        centers = [h3.cell_to_latlng(a) for a in areas]
        counts = self.index.places_near(cached[1], centers, room.policy.near_km)
        return dict(zip(areas, counts, strict=True))

    def _room_places(self, room: RoomState) -> int:
        """The holdable places of the room's whole area (its centre and radius)."""
        self._places(room, [])  # the index's rows of this tick
        rows = self._rows[room.spec["service"]][1]
        return self.index.places_near(
            rows, [(room.spec["lat"], room.spec["lng"])], room.spec["radius_km"]
        )[0]

    async def run(self) -> None:
        """Tick forever (every gateway): a Redis outage is logged and waited out."""
        while True:
            try:
                await self.tick()
            except Exception as exc:
                log.warning("waiting rooms: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.tick_seconds)

    async def tick(self) -> None:
        shed_now = float(self.shed())
        if shed_now > self._shed_seen:
            await self.ticker.incrbyfloat(SHED_KEY, shed_now - self._shed_seen)
        self._shed_seen = shed_now
        ids = {v.decode() for v in await self.ticker.smembers(ROOMS_KEY)}
        for gone in set(self.rooms) - ids:
            del self.rooms[gone]
        shed = None
        for rid in sorted(ids):
            room = await self.read(rid, self.ticker)
            if room.state == "closed":
                self._publish(room)
                continue
            k = room_key(rid)
            waiting = {a.decode() for a in await self.ticker.hkeys(f"{k}:areas")}
            room.places = self._places(room, sorted(waiting | set(room.sold_out_areas)))
            if await self._lead(k):
                if shed is None:
                    shed = float(await self.ticker.getdel(SHED_KEY) or 0)
                await self._lead_tick(room, waiting, shed)
                room = await self.read(rid, self.ticker)
            self._publish(room)

    async def _lead(self, k: str) -> bool:
        """Whether this gateway ticks the room now (it holds, or took, its lock)."""
        lock = f"{k}:lock"
        ms = int(max(self.tick_seconds * 6, 2) * 1000)
        if await self.ticker.set(lock, self.me, nx=True, px=ms):
            return True
        if (await self.ticker.get(lock) or b"").decode() == self.me:
            await self.ticker.pexpire(lock, ms)
            return True
        return False

    async def _lead_tick(self, room: RoomState, waiting: set[str], shed: float) -> None:
        k = room_key(room.room_id)
        now = self.now()
        if not room.drawn and now >= room.spec["opens_at"]:
            await self._open(room)
            room = await self.read(room.room_id, self.ticker)
        if not room.drawn:
            return
        await self._expire([k, f"{k}:v", f"{k}:sessions", f"{k}:active"], [now], client=self.ticker)
        h = {a.decode(): b.decode() for a, b in (await self.ticker.hgetall(k)).items()}
        last = float(h.get("last", now))
        target = room.policy.per_minute
        rate = next_rate(float(h.get("rate", target)), target, int(shed))
        bucket = refill_bucket(float(h.get("bucket", 0)), rate, now - last)
        await self.ticker.hset(k, mapping={"last": repr(now), "rate": repr(rate)})
        if room.state != "open":
            await self.ticker.hset(k, "bucket", "0")
            return
        for area, n in room.places.items():  # places came back: no longer sold out
            if n > 0 and area in room.sold_out_areas:
                await self.ticker.srem(f"{k}:soldout", area)
        budget = int(bucket)
        depth = budget * 4 + 100
        head_ids = [v.decode() for v in await self.ticker.zrange(f"{k}:q", 0, depth - 1)]
        recs = await self.ticker.hmget(f"{k}:v", head_ids) if head_ids else []
        head = [Waiting(v, json.loads(r)["a"]) for v, r in zip(head_ids, recs, strict=True) if r]
        missing = {w.area for w in head} - room.places.keys()
        if missing:  # joined since the areas were read
            room.places |= self._places(room, sorted(missing))
        active = {a.decode(): int(n) for a, n in (await self.ticker.hgetall(f"{k}:active")).items()}
        whole = self._room_places(room)
        decision = decide(head, waiting, room.places, active, budget, room.policy.margin, whole)
        for area in decision.sold_out:
            await self._sold_out(
                [k, f"{k}:q", f"{k}:v", f"{k}:soldout", f"{k}:areas"], [area], client=self.ticker
            )
        admitted = 0
        if decision.admitted:
            expires = int(now) + room.policy.session_seconds
            admitted = int(
                await self._admit(
                    [k, f"{k}:q", f"{k}:v", f"{k}:sessions", f"{k}:active", f"{k}:areas"],
                    [expires, *(w.visitor for w in decision.admitted)],
                    client=self.ticker,
                )
            )
        await self.ticker.hset(k, "bucket", repr(bucket - admitted))

    async def _open(self, room: RoomState) -> None:
        """Draw the pre-queue's lottery and open (once: the script refuses a second draw)."""
        k = room_key(room.room_id)
        seed = room.spec.get("seed")
        if seed is None:
            seed = secrets.randbits(63)
        # Joins stamped at or after the opening queue behind the pre-queue already, so
        # the pre-queue no longer grows: one draw (again only if a gateway's clock lagged
        # and a join slipped in meanwhile).
        for _ in range(5):
            entrants = [v.decode() for v in await self.ticker.zrange(f"{k}:pre", 0, -1)]
            order = lottery(seed, entrants)
            keys = [k, f"{k}:pre", f"{k}:q", f"{k}:v", f"{k}:lottery", f"{k}:areas"]
            n = int(await self._draw(keys, [seed, *order], client=self.ticker))
            if n != -2:
                break
        # the opening starts with a full bucket: the first admissions go out at once
        full = refill_bucket(0.0, room.policy.per_minute, 1e9)
        await self.ticker.hset(k, mapping={"bucket": repr(full), "last": repr(self.now())})
        hold = await self.ticker.hget(k, "hold")
        if hold == b"1":
            await self.ticker.hset(k, "state", "paused")
        log.info("room %s opened: lottery of %d drawn with seed %d", room.room_id, n, seed)

    def _publish(self, room: RoomState) -> None:
        rid = room.room_id
        m, c = self.metrics, room.counts
        m.waiting.labels(rid).set(c["waiting"])
        m.pre_queue.labels(rid).set(c["pre_queue"])
        m.admitted.labels(rid).set(c["admitted"])
        m.holding.labels(rid).set(c["holding"])
        m.abandoned.labels(rid).set(c["expired"])
        m.sold_out.labels(rid).set(c["sold_out"])
        m.sold_out_areas.labels(rid).set(len(room.sold_out_areas))
        m.rate.labels(rid).set(room.rate if room.state == "open" else 0)
        m.open.labels(rid).set(1 if room.state == "open" else 0)
        seen = self._admits.setdefault(rid, deque())
        t = time.monotonic()
        seen.append((t, c["admitted"]))
        while seen and seen[0][0] < t - 60:
            seen.popleft()
        m.admitted_per_minute.labels(rid).set(c["admitted"] - seen[0][1])
