"""The shard's command channel (ADR 0026) on a real local Ray and a real redis-server:
it answers as the Ray call does, lets in only who holds the token, survives garbage,
and breaks with its shard, after which the router finds the restarted one."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import ray

from actors.api import Hexbook
from actors.channel import MAX_FRAME, Address, ChannelClient, ChannelClosed
from actors.embedded_redis import EmbeddedRedis
from actors.ids import routable_id
from engine.codec import Outcome, encode_commands
from engine.errors import CalendarNotFound, SlotUnavailable, Unavailable
from engine.records import Hold, PlaceHold
from gateway.router import ShardRouter
from tests.actors.test_shard_faults import SERVICE, setup_city

pytestmark = pytest.mark.usefixtures("ray_local")
PID = "site-0"  # two places in every slot
T = TypeVar("T")


@pytest.fixture
def city(redis_server: EmbeddedRedis, namespace: str) -> Iterator[tuple[Hexbook, list[int]]]:
    hb, starts = setup_city(redis_server.url, namespace)
    yield hb, starts[PID]
    hb.close()


def hold(hb: Hexbook, start: int, party: int = 1, service: str = SERVICE) -> PlaceHold:
    return PlaceHold(PID, service, None, hb.now(), routable_id(PID, service), start, party, ttl=600)


def address(hb: Hexbook) -> Address:
    return ray.get(hb.shard(hb.shard_of(PID)).channel.remote(), timeout=60)  # type: ignore[no-any-return]


async def over_channel(where: Address, batch: list[PlaceHold]) -> list[Outcome]:
    client = ChannelClient(where)
    try:
        return await client.call(encode_commands(list(batch)))
    finally:
        await client.aclose()


def frame(call_id: int, payload: bytes) -> bytes:
    return struct.pack("!II", call_id, len(payload)) + payload


async def closed_by_the_shard(where: Address, first: bytes) -> bytes:
    """Connect, send ``first``, and read until the shard closes: what it sent back."""
    reader, writer = await asyncio.open_connection(where.host, where.port)
    writer.write(first)
    try:
        return await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()


def test_the_channel_answers_as_the_ray_call_does(city: tuple[Hexbook, list[int]]) -> None:
    hb, starts = city
    shard = hb.shard_of(PID)
    start = starts[0]
    through_channel = asyncio.run(
        over_channel(address(hb), [hold(hb, start, 2), hold(hb, start, 1), hold(hb, start, 1, "x")])
    )
    placed, full, missing = through_channel
    assert isinstance(placed, Hold) and placed.party_size == 2 and placed.start == start
    assert isinstance(full, SlotUnavailable) and full.code == "slot_unavailable"
    assert isinstance(missing, CalendarNotFound)
    # The same shard's state, read by the Ray call: the place is taken, and its refusal
    # is the very error the channel carried.
    (by_ray,) = hb.submit(shard, [hold(hb, start, 1)])
    assert (type(by_ray), by_ray.message) == (type(full), full.message)
    grid = hb.slots(PID, SERVICE)
    assert grid["held"][(start - grid["start"]) // grid["slot_seconds"]] == 2


def test_a_connection_without_the_token_is_closed_and_applies_nothing(
    city: tuple[Hexbook, list[int]],
) -> None:
    hb, starts = city
    where = address(hb)
    start = starts[1]
    forged = frame(0, b"\x00" * 16) + frame(1, encode_commands([hold(hb, start, 2)]))
    assert asyncio.run(closed_by_the_shard(where, forged)) == b""
    (placed,) = hb.submit(hb.shard_of(PID), [hold(hb, start, 2)])
    assert isinstance(placed, Hold), "the forged connection's hold was not applied"


def test_garbage_after_the_token_closes_that_connection_only(
    city: tuple[Hexbook, list[int]],
) -> None:
    hb, starts = city
    where = address(hb)
    oversized = frame(0, where.token) + struct.pack("!II", 1, MAX_FRAME + 1)
    assert asyncio.run(closed_by_the_shard(where, oversized)) == b""
    not_commands = frame(0, where.token) + frame(7, b"\xc1 not msgpack")
    answer = asyncio.run(closed_by_the_shard_or_answer(where, not_commands))
    assert answer[:4] == struct.pack("!I", 7), "a batch that is not commands is answered"
    (placed,) = asyncio.run(over_channel(where, [hold(hb, starts[2])]))
    assert isinstance(placed, Hold), "the shard still serves the channel"


async def closed_by_the_shard_or_answer(where: Address, first: bytes) -> bytes:
    """Connect, send ``first``; the first answer frame's bytes."""
    reader, writer = await asyncio.open_connection(where.host, where.port)
    writer.write(first)
    try:
        return await asyncio.wait_for(reader.read(64 * 1024), timeout=30)
    finally:
        writer.close()


def test_a_killed_shard_breaks_the_channel_and_the_router_finds_the_restarted_one(
    city: tuple[Hexbook, list[int]],
) -> None:
    hb, starts = city
    shard = hb.shard_of(PID)
    slots = iter(starts[3:])

    async def scenario() -> None:
        router = ShardRouter(hb, deadline=20)
        try:
            assert isinstance(await router.submit(hold(hb, next(slots))), Hold)
            first = router._channels[shard]
            ray.kill(hb.shard(shard), no_restart=False)
            refused = await until_async(
                lambda: router.submit(hold(hb, next(slots))),
                lambda out: isinstance(out, Unavailable),
            )
            assert "restarting" in refused.message  # type: ignore[union-attr]
            assert first.closed, "the broken channel was dropped"
            with pytest.raises(ChannelClosed):
                await first.call(encode_commands([hold(hb, next(slots))]))
            again = await until_async(
                lambda: router.submit(hold(hb, next(slots))),
                lambda out: isinstance(out, Hold),
            )
            assert isinstance(again, Hold)
            assert router._channels[shard].address.token != first.address.token
        finally:
            await router.aclose()

    asyncio.run(scenario())


async def until_async(
    attempt: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float = 90
) -> T:
    """``attempt()`` again until its answer is ``done``; fails the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        out = await attempt()
        if done(out):
            return out
        assert time.monotonic() < deadline, f"gave up waiting; last answer {out!r}"
        await asyncio.sleep(0.1)
