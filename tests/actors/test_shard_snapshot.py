"""The shard's snapshots are sealed and stored beside the writer, never in its step.

The shard actor runs here as a plain object on this test's event loop (no Ray), on a
real redis-server. A snapshot's sealing is held at a gate (a wrapper of the real
``journal.seal_compressed`` that waits for the test), so the test sees what the writer
does while a snapshot is being made."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis.asyncio as aioredis

from actors import journal
from actors.embedded_redis import EmbeddedRedis
from actors.shard import ShardActor
from actors.shard_core import ShardCore
from engine.codec import encode_commands
from engine.records import Booking, ConfirmHold, Hold, PlaceHold
from tests.actors.test_shard_core import new_core, provider, snaps, workload

GATE_SECONDS = 20  # a gate never opened lets the seal go on after this long


class Gate:
    """Holds every snapshot's sealing until opened; counts the seals that waited."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.waiting = threading.Event()
        self.timed_out = False
        self.seals = 0

    def wrap(self, seal: Any) -> Any:
        def gated(*args: Any) -> bytes:
            self.seals += 1
            self.waiting.set()
            if not self.opened.wait(GATE_SECONDS):
                self.timed_out = True
            return seal(*args)  # type: ignore[no-any-return]

        return gated


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    g = Gate()
    monkeypatch.setattr(journal, "seal_compressed", g.wrap(journal.seal_compressed))
    return g


def hold(pid: str, k: int, start: int) -> bytes:
    return encode_commands([PlaceHold(pid, "vaccine", f"k{k}", 1000 + k, f"h{k}", start, 1, 600)])


async def open_starts(shard: ShardActor, pid: str) -> list[int]:
    grid = await shard.slots(pid, "vaccine")
    assert isinstance(grid, dict)
    return [grid["start"] + i * grid["slot_seconds"]
            for i, c in enumerate(grid["capacity"]) if c > 0]  # fmt: skip


async def rebuilt(url: str) -> bytes:
    core = ShardCore("s0", aioredis.from_url(url))
    await core.recover()
    await core.redis.aclose()
    return journal.encode(core.shard_snapshot())


async def three_sites(url: str) -> ShardActor:
    """A shard that snapshots only when asked, with three providers' calendars."""
    shard = ShardActor("s0", url, snapshot_every_events=10**9, sweep_seconds=0, roll_seconds=0)
    for i in range(3):
        p = provider(i)
        await shard.provision(p, snaps(p))
    return shard


def test_the_writer_serves_while_a_snapshot_is_sealed_and_stored(
    redis_server: EmbeddedRedis, redis_client: object, gate: Gate
) -> None:
    async def go() -> None:
        shard = ShardActor("s0", redis_server.url, snapshot_every_events=1, sweep_seconds=0,
                           roll_seconds=0)  # fmt: skip
        p = provider(0)
        await shard.provision(p, snaps(p))
        starts = await open_starts(shard, "p0")
        first = await shard.submit(hold("p0", 0, starts[0]))  # an event: a snapshot is due
        assert await asyncio.to_thread(gate.waiting.wait, GATE_SECONDS)
        # The snapshot is held at its seal; the writer still applies and commits.
        served = [await asyncio.wait_for(shard.submit(hold("p0", k, starts[k])), 10)
                  for k in range(1, 4)]  # fmt: skip
        assert not gate.opened.is_set() and not gate.timed_out
        assert all(isinstance(o[0], Hold) for o in [first, *served])
        gate.opened.set()
        covered = await asyncio.wait_for(shard.write_snapshot(), 10)
        assert not gate.timed_out
        # The last snapshot covers every commit; the journal kept what came after each.
        live = await shard.committed_state()
        assert covered == journal.decode_shard_snapshot(live).last_id
        assert await rebuilt(redis_server.url) == live
        assert gate.seals >= 2

    asyncio.run(go())


def test_a_snapshot_asked_for_under_load_covers_what_was_committed(
    redis_server: EmbeddedRedis, redis_client: object
) -> None:
    """``write_snapshot`` while batches commit: each snapshot is of a committed state
    (never of a batch still on its way to Redis, which a replay would apply twice)."""

    async def go() -> None:
        shard = await three_sites(redis_server.url)
        starts = [await open_starts(shard, f"p{i}") for i in range(3)]

        async def client(c: int) -> int:
            booked = 0
            for k in range(c * 1000, c * 1000 + 40):
                pid = f"p{k % 3}"
                out = (await shard.submit(hold(pid, k, starts[k % 3][k % 4])))[0]
                if isinstance(out, Hold):
                    confirm = ConfirmHold(pid, "vaccine", f"c{k}", 1001 + k, out.hold_id,
                                          f"b{k}", b"", "r")  # fmt: skip
                    booked += isinstance((await shard.submit(encode_commands([confirm])))[0],
                                         Booking)  # fmt: skip
            return booked

        async def snapshots() -> list[str]:
            return [await shard.write_snapshot() for _ in range(15)]

        *booked, ids = await asyncio.gather(*(client(c) for c in range(8)), snapshots())
        assert sum(booked) > 0 and len(set(ids)) > 1  # snapshots were taken among batches
        assert await rebuilt(redis_server.url) == await shard.committed_state()

    asyncio.run(go())


def test_a_snapshot_is_stored_a_part_at_a_time_and_commits_go_in_between(
    redis_server: EmbeddedRedis, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis runs one command at a time: a snapshot written in one SET held every commit
    back until it was written (0.8 s for a launch city's 95 MB). It is staged a part per
    command, and a batch sent while it is staged is committed before it is promoted."""
    monkeypatch.setattr(journal, "SNAPSHOT_PART", 64)

    async def go() -> None:
        shard = await three_sites(redis_server.url)
        starts = await open_starts(shard, "p0")
        redis = shard._core.redis
        real_append = redis.append
        between: list[Any] = []

        async def append(key: str, value: Any) -> Any:
            if not between:  # a batch while the snapshot is half written
                out = await asyncio.wait_for(shard.submit(hold("p0", 1, starts[1])), 10)
                between.append(out[0])
            return await real_append(key, value)

        monkeypatch.setattr(redis, "append", append)
        appends = redis_client.info("commandstats").get("cmdstat_append", {}).get("calls", 0)
        covered = await asyncio.wait_for(shard.write_snapshot(), 30)
        stored = redis_client.strlen(journal.snapshot_key("s0"))
        calls = redis_client.info("commandstats")["cmdstat_append"]["calls"] - appends
        assert stored > 3 * 64 and calls == -(-stored // 64) - 1  # a command per part
        assert [type(o) for o in between] == [Hold]
        assert not redis_client.exists(journal.staged_snapshot_key("s0"))
        # The batch committed meanwhile is after the snapshot, in the journal it kept.
        live = await shard.committed_state()
        assert journal.decode_shard_snapshot(live).last_id != covered
        assert redis_client.xlen(journal.journal_key("s0")) == 1
        assert await rebuilt(redis_server.url) == live

    asyncio.run(go())


def test_a_snapshot_cut_short_leaves_the_last_one_and_the_journal(
    redis_server: EmbeddedRedis, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "SNAPSHOT_PART", 64)

    async def go() -> None:
        core = await new_core(redis_server.url)
        await workload(core, 20)
        await core.write_snapshot()
        await workload(core, 20, first=3)
        real_append, calls = core.redis.append, [0]

        async def append(key: str, value: Any) -> Any:
            calls[0] += 1
            if calls[0] == 2:
                raise ConnectionError("the connection dropped")  # the store is cut short
            return await real_append(key, value)

        monkeypatch.setattr(core.redis, "append", append)
        with pytest.raises(ConnectionError):
            await core.write_snapshot()
        assert core.snapshot_due()  # missed: the next one is due at once
        assert redis_client.exists(journal.staged_snapshot_key("s0"))  # half a snapshot
        again = await new_core(redis_server.url)  # the last snapshot and the journal
        assert journal.encode(again.shard_snapshot()) == journal.encode(core.shard_snapshot())
        # A stray staged value of the wrong length is never promoted.
        keys = [journal.staged_snapshot_key("s0"), journal.snapshot_key("s0"),
                journal.journal_key("s0")]  # fmt: skip
        assert await core.redis.eval(journal.PROMOTE_LUA, 3, *keys, 10**9, "0-1") == 0
        monkeypatch.setattr(core.redis, "append", real_append)
        await core.write_snapshot()  # the next store starts its staging anew
        assert not redis_client.exists(journal.staged_snapshot_key("s0"))
        again = await new_core(redis_server.url)
        assert journal.encode(again.shard_snapshot()) == journal.encode(core.shard_snapshot())

    asyncio.run(go())


def test_snapshots_are_compressed_and_an_uncompressed_one_still_reads(
    redis_server: EmbeddedRedis, redis_client: Any
) -> None:
    async def go() -> None:
        core = await new_core(redis_server.url)
        await workload(core, 60)
        await core.write_snapshot()
        plain = journal.encode(core.shard_snapshot())
        assert redis_client.strlen(journal.snapshot_key("s0")) * 3 < len(plain)
        # As written before snapshots were compressed (no keyring here: stored clear).
        redis_client.set(journal.snapshot_key("s0"), plain)
        again = await new_core(redis_server.url)
        assert journal.encode(again.shard_snapshot()) == plain

    asyncio.run(go())


def test_a_snapshot_encoded_a_calendar_at_a_time_is_the_same_bytes(
    redis_server: EmbeddedRedis, redis_client: Any
) -> None:
    """``snapshot_parts`` (a call per calendar, so the writer's loop gets its turn)
    joins to exactly what one ``encode`` call gives: one format, one decoder."""

    async def go() -> None:
        core = await new_core(redis_server.url)
        empty = core.shard_snapshot()
        assert b"".join(journal.snapshot_parts(empty)) == journal.encode(empty)
        await workload(core, 30)  # 3 calendars, holds and bookings
        for i in range(3, 20):  # past msgpack's 15-element short array
            core.add_calendars(provider(i), snaps(provider(i)))
        await core.commit()
        snap = core.shard_snapshot()
        assert len(snap.calendars) == 20
        assert b"".join(journal.snapshot_parts(snap)) == journal.encode(snap)
        sealed = journal.seal_snapshot(snap, None, "s0")
        assert journal.encode(journal.open_snapshot(sealed, None, "s0")) == journal.encode(snap)
        # The shard's own sealing, a piece at a time, makes a value that reads the same.
        piecewise = await core._seal(snap, None)
        assert journal.encode(journal.open_snapshot(piecewise, None, "s0")) == journal.encode(snap)

    asyncio.run(go())
