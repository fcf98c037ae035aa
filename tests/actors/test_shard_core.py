"""Shard durability without Ray: group commit, snapshots, recovery, fail stop.
Real redis-server throughout."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from actors import journal
from actors.availability import AVAILABILITY_STREAM, CalendarChanged, SlotFree, decode_entry
from actors.embedded_redis import EmbeddedRedis
from actors.shard_core import ShardCore
from engine.calendar import Calendar
from engine.errors import CalendarNotFound, SlotUnavailable
from engine.provider import Provider
from engine.records import Booking, ConfirmHold, Hold, PlaceHold
from engine.schedule import WEEKDAYS, WeeklyTemplate

TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "09:00", "11:00", 2)


def provider(i: int) -> Provider:
    return Provider(
        provider_id=f"p{i}",
        name=f"Site {i}",
        lat=41.88,
        lng=-87.63,
        timezone="America/Chicago",
        services=("vaccine",),
    )


def snaps(p: Provider) -> list:
    return [
        Calendar.from_template(
            p.provider_id, s, p.timezone, TEMPLATE, date(2026, 3, 2), 3
        ).snapshot()
        for s in p.services
    ]


def open_starts(core: ShardCore, pid: str) -> list[int]:
    cal = core.calendars[(pid, "vaccine")]
    return [int(s) for s in cal.starts()[cal.capacity > 0]]


async def new_core(url: str, name: str = "s0", **kw: object) -> ShardCore:
    core = ShardCore(name, aioredis.from_url(url, socket_timeout=2), **kw)  # type: ignore[arg-type]
    await core.recover()
    return core


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def workload(core: ShardCore, n: int = 60, first: int = 0) -> list[object]:
    outcomes = []
    for i in range(first, first + 3):
        core.add_calendars(provider(i), snaps(provider(i)))
    await core.commit()
    for k in range(n):
        pid = f"p{first + k % 3}"
        start = open_starts(core, pid)[k % 5]
        out = core.apply([PlaceHold(pid, "vaccine", f"k{k}", 1000 + k, f"h{k}", start, 1, 30)])
        outcomes += out
        if isinstance(out[0], Hold) and k % 2:
            outcomes += core.apply(
                [ConfirmHold(pid, "vaccine", f"c{k}", 1000 + k, f"h{k}", f"b{k}", b"", "r")]
            )
        if k % 7 == 0:
            core.sweep(1000 + k)
        await core.commit()
    return outcomes


def test_replay_equals_state(redis_server: EmbeddedRedis, redis_client: object) -> None:
    async def go() -> None:
        core = await new_core(redis_server.url)
        outcomes = await workload(core)
        assert any(isinstance(o, SlotUnavailable) for o in outcomes)  # contention happened
        assert any(isinstance(o, Booking) for o in outcomes)
        again = await new_core(redis_server.url)
        assert journal.encode(again.shard_snapshot()) == journal.encode(core.shard_snapshot())

    run(go())


def test_snapshot_trims_journal_and_recovery_uses_both(
    redis_server: EmbeddedRedis, redis_client: object
) -> None:
    async def go() -> None:
        core = await new_core(redis_server.url)
        await workload(core, 30)
        await core.write_snapshot()
        key = journal.journal_key("s0")
        assert await core.redis.xlen(key) <= 1  # trimmed up to the snapshot's entry
        await workload(core, 30, first=3)  # more after the snapshot, new calendars too
        again = await new_core(redis_server.url)
        assert journal.encode(again.shard_snapshot()) == journal.encode(core.shard_snapshot())
        assert again.last_id == core.last_id

    run(go())


def test_replacing_a_calendar_with_bookings_is_refused(
    redis_server: EmbeddedRedis, redis_client: object
) -> None:
    from engine.errors import ScheduleConflict

    async def go() -> None:
        core = await new_core(redis_server.url)
        await workload(core, 10)
        with pytest.raises(ScheduleConflict, match="would drop them"):
            core.add_calendars(provider(0), snaps(provider(0)))
        core.add_calendars(provider(7), snaps(provider(7)))  # a new one is fine
        core.add_calendars(provider(7), snaps(provider(7)))  # and so is an idle one again

    run(go())


def test_unknown_calendar_is_an_outcome_not_a_crash(
    redis_server: EmbeddedRedis, redis_client: object
) -> None:
    async def go() -> None:
        core = await new_core(redis_server.url)
        [out] = core.apply([PlaceHold("nope", "vaccine", None, 0, "h", 0, 1, 30)])
        assert isinstance(out, CalendarNotFound)

    run(go())


def test_failed_append_fails_stop_and_loses_only_unacknowledged(tmp_path: Path) -> None:
    async def go() -> None:
        server = EmbeddedRedis(tmp_path / "r").start()
        try:
            core = await new_core(server.url)
            core.add_calendars(provider(0), snaps(provider(0)))
            start = open_starts(core, "p0")[0]
            core.apply([PlaceHold("p0", "vaccine", "k1", 1, "acked", start, 1, 600)])
            await core.commit()  # acknowledged
            core.apply([PlaceHold("p0", "vaccine", "k2", 2, "lost", start, 1, 600)])
            server.kill()
            with pytest.raises((RedisConnectionError, OSError)):
                await core.commit()
            core.fail_stop()
            assert not core.recovered
            assert core.calendars == {}
            server.start()
            await core.redis.connection_pool.disconnect()
            await core.recover()
            holds = core.calendars[("p0", "vaccine")].holds
            assert set(holds) == {"acked"}
        finally:
            server.stop()

    run(go())


def test_availability_deltas_follow_each_change(
    redis_server: EmbeddedRedis, redis_client: object
) -> None:
    async def go() -> None:
        core = await new_core(redis_server.url)
        core.add_calendars(provider(0), snaps(provider(0)))
        await core.commit()
        start = open_starts(core, "p0")[0]
        core.apply([PlaceHold("p0", "vaccine", None, 1, "h1", start, 1, 600)])
        core.apply([PlaceHold("p0", "vaccine", None, 1, "h2", start, 1, 600)])
        await core.commit()
        rows = await core.redis.xrange(AVAILABILITY_STREAM)
        decoded = [decode_entry(i, f).changes for i, f in rows]
        assert decoded[0] == [CalendarChanged("p0", "vaccine")]  # calendar added
        assert decoded[1] == [SlotFree("p0", "vaccine", start, 0)]  # two holds, one delta

    run(go())


def test_a_roll_check_is_spread_over_steps_of_at_most_limit_calendars(
    redis_server: EmbeddedRedis, redis_client: object
) -> None:
    """A shard's first roll check is due for every calendar: in one writer step it
    stalled the writer for half a second at the demo city's size (make bench)."""

    async def go() -> None:
        core = await new_core(redis_server.url)
        for i in range(25):
            core.add_calendars(provider(i), snaps(provider(i)))
        await core.commit()
        now = core.calendars[("p0", "vaccine")].start - 3600
        checked = []
        while True:
            core.roll(now, limit=10)
            checked.append(len(core._roll_due))
            if not core.roll_more:
                break
        assert checked == [10, 20, 25]

    run(go())


def test_an_erasure_reads_only_the_archives_there_are(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """The retention purge runs at a gateway's start: an HSCAN per calendar of the
    shard (2,873 at the demo city) slowed the first seconds of a launch."""

    def hscans() -> int:
        stats: Any = redis_client.info("commandstats").get("cmdstat_hscan", {})
        return int(stats.get("calls", 0))

    async def go() -> None:
        core = await new_core(redis_server.url)
        for i in range(20):
            core.add_calendars(provider(i), snaps(provider(i)))
        await core.commit()
        before = hscans()
        assert await core.erase_archived(5000, "ref-x", None) == 0
        assert hscans() == before  # no archive yet: nothing scanned
        cal = core.calendars[("p3", "vaccine")]
        start = open_starts(core, "p3")[0]
        core.apply([PlaceHold("p3", "vaccine", None, 10, "h", start, 1, 60)])
        core.apply([ConfirmHold("p3", "vaccine", None, 10, "h", "b", b"", "ref-x")])
        core.roll(cal.start + 2 * 86400 + 3600)  # the first day goes to the archive
        await core.commit()
        await core.erase_archived(5000, "ref-x", None)
        assert hscans() == before + 1  # the one archive there is

    run(go())
