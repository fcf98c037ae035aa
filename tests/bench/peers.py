"""What a team would build instead of hexbook, done with care: the same hold and booking
paths (the same JSON in and out as hexbook's, so one wrk script drives all three),
durable before they answer.

- ``redis_app``: FastAPI + redis-py (asyncio, hiredis), one Lua script per request: a
  hold checks and increments the slot's taken places and writes the hold with a TTL; a
  booking turns the hold into a booking. The redis-server runs ``appendfsync always``.
- ``pg_app``: FastAPI + asyncpg + PostgreSQL, one statement per request: a hold is a
  conditional ``UPDATE slots ... WHERE taken + n <= capacity`` feeding an ``INSERT`` of
  the hold (one CTE); a booking deletes the live hold into a booking (one CTE). Commits
  are synchronous (``synchronous_commit = on``, fsync on).

Each is served by ``uvicorn --factory tests.bench.peers:redis_app`` (or ``:pg_app``)
with ``--workers N``; ``HEXBOOK_PEER_REDIS_URL`` or
``HEXBOOK_PEER_PG_DSN`` and ``HEXBOOK_PEER_POOL`` (connections per worker) configure
them. Simplification, the same in both: an expired hold's places are not given back
(the benchmark books every hold at once), which spares the peers a sweeper.

``seed_redis`` and ``seed_pg`` lay out the slots of a city: (provider_id, start, capacity).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["pg_app", "redis_app", "seed_pg", "seed_redis"]

HOLD_SECONDS = 300
POOL = int(os.environ.get("HEXBOOK_PEER_POOL", "16"))

HOLD_LUA = """
local cap = tonumber(redis.call('HGET', KEYS[1], 'cap'))
if not cap then return -1 end
local taken = tonumber(redis.call('HGET', KEYS[1], 'taken') or '0')
local party = tonumber(ARGV[1])
if taken + party > cap then return 0 end
redis.call('HINCRBY', KEYS[1], 'taken', party)
redis.call('SET', KEYS[2], KEYS[1], 'EX', ARGV[2])
return 1
"""
BOOK_LUA = """
local slot = redis.call('GET', KEYS[1])
if not slot then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], slot .. '|' .. ARGV[1])
return 1
"""


def _taken() -> JSONResponse:
    return JSONResponse({"code": "slot_unavailable"}, 409)


def _gone() -> JSONResponse:
    return JSONResponse({"code": "hold_not_found"}, 404)


def redis_app() -> FastAPI:
    import redis.asyncio as aioredis

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A bounded pool that makes a request wait for a connection (not fail).
        pool = aioredis.BlockingConnectionPool.from_url(
            os.environ["HEXBOOK_PEER_REDIS_URL"], max_connections=POOL, timeout=None
        )
        client = aioredis.Redis(connection_pool=pool)
        state["hold"] = client.register_script(HOLD_LUA)
        state["book"] = client.register_script(BOOK_LUA)
        yield
        await client.aclose()
        await pool.disconnect()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/holds", status_code=201)
    async def hold(request: Request) -> Any:
        body = await request.json()
        slot = f"s:{body['provider_id']}:{int(datetime.fromisoformat(body['start']).timestamp())}"
        hold_id = uuid.uuid4().hex
        party = int(body.get("party_size", 1))
        got = await state["hold"](keys=[slot, f"h:{hold_id}"], args=[party, HOLD_SECONDS])
        if got != 1:
            return _taken()
        return JSONResponse({"hold_id": hold_id, "start": body["start"]}, 201)

    @app.post("/v1/bookings", status_code=201)
    async def book(request: Request) -> Any:
        body = await request.json()
        booking_id = uuid.uuid4().hex
        got = await state["book"](
            keys=[f"h:{body['hold_id']}", f"b:{booking_id}"], args=[body["patient"]["reference"]]
        )
        if got != 1:
            return _gone()
        return JSONResponse({"booking_id": booking_id, "hold_id": body["hold_id"]}, 201)

    return app


PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
  provider_id text NOT NULL, start timestamptz NOT NULL, capacity int NOT NULL,
  taken int NOT NULL DEFAULT 0, PRIMARY KEY (provider_id, start));
CREATE TABLE IF NOT EXISTS holds (
  hold_id uuid PRIMARY KEY, provider_id text NOT NULL, start timestamptz NOT NULL,
  party int NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS bookings (
  booking_id uuid PRIMARY KEY, hold_id uuid NOT NULL, provider_id text NOT NULL,
  start timestamptz NOT NULL, patient_ref text NOT NULL);
"""
PG_HOLD = """
WITH s AS (
  UPDATE slots SET taken = taken + $3
  WHERE provider_id = $1 AND start = $2 AND taken + $3 <= capacity
  RETURNING provider_id, start)
INSERT INTO holds SELECT $4, provider_id, start, $3, now() + interval '5 minutes' FROM s
RETURNING hold_id
"""
PG_BOOK = """
WITH h AS (
  DELETE FROM holds WHERE hold_id = $1 AND expires_at > now()
  RETURNING hold_id, provider_id, start)
INSERT INTO bookings SELECT $2, hold_id, provider_id, start, $3 FROM h
RETURNING booking_id
"""


def pg_app() -> FastAPI:
    import asyncpg

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            os.environ["HEXBOOK_PEER_PG_DSN"], min_size=POOL, max_size=POOL
        )
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/holds", status_code=201)
    async def hold(request: Request) -> Any:
        body = await request.json()
        start = datetime.fromisoformat(body["start"])
        hold_id = uuid.uuid4()
        party = int(body.get("party_size", 1))
        got = await state["pool"].fetchval(PG_HOLD, body["provider_id"], start, party, hold_id)
        if got is None:
            return _taken()
        return JSONResponse({"hold_id": hold_id.hex, "start": body["start"]}, 201)

    @app.post("/v1/bookings", status_code=201)
    async def book(request: Request) -> Any:
        body = await request.json()
        try:
            hold_id = uuid.UUID(body["hold_id"])
        except ValueError:
            return _gone()
        booking_id = uuid.uuid4()
        got = await state["pool"].fetchval(
            PG_BOOK, hold_id, booking_id, body["patient"]["reference"]
        )
        if got is None:
            return _gone()
        return JSONResponse({"booking_id": booking_id.hex, "hold_id": body["hold_id"]}, 201)

    return app


def seed_redis(url: str, slots: Iterable[tuple[str, int, int]]) -> int:
    """Lay out the slots: one hash per slot (capacity, taken 0)."""
    import redis

    client = redis.Redis.from_url(url)
    n = 0
    pipe = client.pipeline(transaction=False)
    for pid, start, cap in slots:
        pipe.hset(f"s:{pid}:{start}", mapping={"cap": cap, "taken": 0})
        n += 1
        if n % 10_000 == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return n


async def seed_pg(dsn: str, slots: Iterable[tuple[str, int, int]]) -> int:
    """Create the tables and COPY the slots in."""
    from datetime import UTC

    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(PG_SCHEMA)
        rows = [(pid, datetime.fromtimestamp(start, UTC), cap, 0) for pid, start, cap in slots]
        await conn.copy_records_to_table("slots", records=rows)
        await conn.execute("ANALYZE slots")
        return len(rows)
    finally:
        await conn.close()
