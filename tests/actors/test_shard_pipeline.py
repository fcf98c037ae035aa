"""The shard applies a batch while the one before it is on its way to Redis (ADR 0027),
and answers it only once that one is durable; a failed commit forgets the batch behind.

The shard actor runs here as a plain object on this test's event loop (no Ray), on a
real redis-server whose writes the test holds with ``CLIENT PAUSE ... WRITE``."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis

from actors import journal
from actors.embedded_redis import EmbeddedRedis
from actors.shard import ShardActor
from actors.shard_core import ShardCore
from engine.errors import HoldNotFound, Unavailable
from engine.records import Hold
from tests.actors.test_shard_core import provider, snaps
from tests.actors.test_shard_snapshot import hold, open_starts
from tests.polling import until_async


async def rebuilt(url: str) -> bytes:
    core = ShardCore("s0", aioredis.from_url(url))
    await core.recover()
    await core.redis.aclose()
    return journal.encode(core.shard_snapshot())


async def held_at(shard: ShardActor, start: int) -> int:
    """Places held in the slot at ``start``, as the shard's memory has it."""
    grid = await shard.slots("p0", "vaccine")
    assert isinstance(grid, dict)
    return int(grid["held"][(start - grid["start"]) // grid["slot_seconds"]])


async def one_site(url: str, redis_timeout: float) -> tuple[ShardActor, list[int], dict[int, int]]:
    shard = ShardActor("s0", url, snapshot_every_events=10**9, sweep_seconds=0, roll_seconds=0,
                       redis_timeout=redis_timeout)  # fmt: skip
    p = provider(0)
    await shard.provision(p, snaps(p))
    starts = await open_starts(shard, "p0")
    return shard, starts, {s: await held_at(shard, s) for s in starts[:2]}


def test_the_batch_behind_is_applied_while_one_commits_and_answered_after_it(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    async def go() -> None:
        shard, starts, held = await one_site(redis_server.url, redis_timeout=30)
        done: list[str] = []

        def submit(name: str, k: int, start: int) -> asyncio.Task[Any]:
            task = asyncio.create_task(shard.submit(hold("p0", k, start)))
            task.add_done_callback(lambda _: done.append(name))
            return task

        redis_client.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")  # commits wait
        try:
            first = submit("first", 1, starts[0])
            await until_async(lambda: _taken(shard, starts[0], held), 10)
            second = submit("second", 2, starts[1])
            # Applied while the first batch is still on its way (Redis holds its writes),
            await until_async(lambda: _taken(shard, starts[1], held), 10)
            # and neither is answered: nothing is durable yet.
            await asyncio.sleep(0.05)
            assert done == []
        finally:
            redis_client.execute_command("CLIENT", "UNPAUSE")
        outs = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert all(isinstance(o[0], Hold) for o in outs)
        assert done == ["first", "second"]  # in the journal's order
        assert await rebuilt(redis_server.url) == await shard.committed_state()

    asyncio.run(go())


async def _taken(shard: ShardActor, start: int, held: dict[int, int]) -> bool:
    return await held_at(shard, start) == held[start] + 1


def test_a_failed_commit_forgets_the_batch_applied_behind_it(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    async def go() -> None:
        shard, starts, held = await one_site(redis_server.url, redis_timeout=0.5)
        redis_client.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
        try:
            first = asyncio.create_task(shard.submit(hold("p0", 1, starts[0])))
            await until_async(lambda: _taken(shard, starts[0], held), 10)
            second = asyncio.create_task(shard.submit(hold("p0", 2, starts[1])))
            outs = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
        finally:
            redis_client.execute_command("CLIENT", "UNPAUSE")
        # The first commit timed out: the shard failed stop, and the batch applied behind
        # it (never sent) is refused too, to be retried.
        assert [type(o) for o in outs] == [Unavailable] * 2
        # Back: the shard rebuilds from Redis; the second hold was never made.
        third = await asyncio.wait_for(shard.submit(hold("p0", 3, starts[1])), 10)
        assert isinstance(third[0], Hold)
        assert isinstance(await shard.hold("p0", "vaccine", "h2"), HoldNotFound)
        assert await rebuilt(redis_server.url) == await shard.committed_state()

    asyncio.run(go())
