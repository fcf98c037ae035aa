"""Dose series on a real stack: the two doses' calendars on two shards, either shard
killed at each step of the protocol (before a step is sent, and after it happened but
before its outcome was recorded, as if the gateway died with it); a retry with the same
series finishes it whole, and the audit agrees."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import ray
import redis
import redis.asyncio as aioredis

from actors.api import Hexbook, routable_id
from actors.audit import audit
from actors.embedded_redis import EmbeddedRedis
from actors.policy import PolicyStore
from actors.series import SeriesAborted, SeriesBook
from engine.eligibility import AgeBand, Attestation, Rule
from engine.errors import Unavailable
from engine.provider import Provider
from engine.records import Command
from engine.schedule import WEEKDAYS, WeeklyTemplate
from engine.series import Step
from tests.dates import ahead

pytestmark = pytest.mark.usefixtures("ray_local")

TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "09:00", "12:00", 2)
POSITIONS = [(41.88, -87.63), (41.95, -87.70), (41.80, -87.60), (41.99, -87.81)]


class Crash(Exception):
    """The gateway driving the series stops here."""


def _city(url: str, namespace: str) -> tuple[Hexbook, list[str]]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    # A new namespace starts two shard actors: on a loaded 2-core machine the first call
    # may wait on a worker process longer than the 10 s default.
    hb = Hexbook.connect(url, shards=2, namespace=namespace, call_timeout=60)
    sites: dict[str, str] = {}
    for i, (lat, lng) in enumerate(POSITIONS):
        p = Provider(
            provider_id=f"site-{i}",
            name=f"Site {i}",
            lat=lat,
            lng=lng,
            timezone="America/Chicago",
            services=("vaccine",),
        )
        hb.provision(p, TEMPLATE, ahead(), days=7)
        sites.setdefault(hb.shard_of(p.provider_id), p.provider_id)
    assert len(sites) == 2, "the city must spread over both shards"
    return hb, list(sites.values())


@pytest.fixture(scope="module")
def city(module_redis: EmbeddedRedis) -> Iterator[tuple[Hexbook, list[str]]]:
    """One stack for the tests that keep it sound (each its own slots and series)."""
    hb, sites = _city(module_redis.url, f"hexbook-series-{uuid.uuid4().hex[:6]}")
    yield hb, sites
    hb.close()


@pytest.fixture
def stack(module_redis: EmbeddedRedis, namespace: str) -> Iterator[tuple[Hexbook, list[str]]]:
    """A stack of its own, for a test that breaks an invariant on purpose."""
    hb, sites = _city(module_redis.url, namespace)
    yield hb, sites
    hb.close()


SLOTS = itertools.count()  # each series its own slots: the module's tests share calendars


def open_starts(hb: Hexbook, pid: str) -> list[int]:
    g = hb.slots(pid, "vaccine")
    return [g["start"] + k * g["slot_seconds"] for k, c in enumerate(g["capacity"]) if c]


def with_book(hb: Hexbook, url: str, work: Any, hook: Any = None) -> Any:
    """Run ``work(book)`` with a SeriesBook of its own (one gateway's), as a gateway
    would: commands to the shards, the record in Redis."""

    async def submit(cmd: Command) -> Any:
        def one() -> Any:
            try:
                return hb.submit(hb.shard_of(cmd.provider_id), [cmd])[0]
            except Exception as exc:  # the shard did not answer in time
                return Unavailable(str(exc))

        return await asyncio.to_thread(one)

    async def passthrough(_: str, __: Step) -> None:
        return None

    async def main() -> Any:
        client = aioredis.from_url(url)
        try:
            return await work(SeriesBook(client, submit, hb.now, hook=hook or passthrough))
        finally:
            await client.aclose()

    return asyncio.run(main())


async def no_rule(_: str, __: str) -> None:
    return None


def hold_series(hb: Hexbook, url: str, sid: str, a: str, b: str, ttl: int = 600) -> Any:
    k = next(SLOTS)
    first, second = open_starts(hb, a)[k], open_starts(hb, b)[-1 - k]
    doses = [
        (a, "vaccine", first, routable_id(a, "vaccine"), routable_id(a, "vaccine")),
        (b, "vaccine", second, routable_id(b, "vaccine"), routable_id(b, "vaccine")),
    ]
    return with_book(hb, url, lambda book: book.hold(sid, planned(doses), 1, ttl, None, no_rule))


def planned(doses: list[Any]) -> Any:
    async def plan() -> list[Any]:
        return doses

    return plan


def active(hb: Hexbook, pid: str, booking_id: str) -> bool:
    return hb.booking(pid, "vaccine", booking_id).status == "active"


@pytest.mark.parametrize("point", ["before", "sent"])
@pytest.mark.parametrize("dose", [0, 1])
@pytest.mark.parametrize("victim", [0, 1])
def test_a_shard_killed_at_any_step_leaves_the_series_whole_after_a_retry(
    city: tuple[Hexbook, list[str]],
    module_redis: EmbeddedRedis,
    point: str,
    dose: int,
    victim: int,
) -> None:
    hb, (a, b) = city
    url = module_redis.url
    sid = f"series-{point}-{dose}-{victim}"
    rec = hold_series(hb, url, sid, a, b)
    killed: list[str] = []

    async def kill_then_crash(at: str, step: Step) -> None:
        if (at, step.dose) == (point, dose) and not killed:
            shard = hb.shard_of((a, b)[victim])
            killed.append(shard)
            await asyncio.to_thread(ray.kill, hb.shard(shard), no_restart=False)
            raise Crash(f"{at} dose {dose}")

    with pytest.raises(Crash):
        with_book(hb, url, lambda bk: bk.confirm(sid, "pat", b"d", no_rule), kill_then_crash)
    assert killed
    # another gateway takes over with the same series id
    done = with_book(hb, url, lambda bk: bk.confirm(sid, "pat", b"d", no_rule))
    assert done.state == "confirmed"
    assert [active(hb, d.provider_id, d.booking_id) for d in rec.doses] == [True, True]
    for d in rec.doses:
        assert hb.booking(d.provider_id, "vaccine", d.booking_id).series_id == sid
    report = audit(redis.Redis.from_url(url))
    assert report.ok, report.summary()
    assert report.series >= 1 and report.series_in_flight == 0


def test_a_dose_that_cannot_be_confirmed_undoes_the_other(
    city: tuple[Hexbook, list[str]], module_redis: EmbeddedRedis
) -> None:
    hb, (a, b) = city
    url = module_redis.url
    rec = hold_series(hb, url, "short", a, b)
    hb.release(rec.doses[1].hold_id, b, "vaccine")  # dose 2's hold is gone
    with pytest.raises(SeriesAborted, match="dose 2"):
        with_book(hb, url, lambda bk: bk.confirm("short", "pat", b"d", no_rule))
    assert not active(hb, a, rec.doses[0].booking_id)  # booked, then cancelled
    assert with_book(hb, url, lambda bk: bk.get("short")).state == "aborted"
    # the sweeper has nothing left; the audit sees a series with no dose active
    assert with_book(hb, url, lambda bk: bk.resume_stale(0, no_rule)) == 0
    report = audit(redis.Redis.from_url(url))
    assert report.ok, report.summary()
    assert report.series_in_flight == 0


def test_a_series_left_half_way_is_finished_by_the_sweeper_and_cancelled_whole(
    city: tuple[Hexbook, list[str]], module_redis: EmbeddedRedis
) -> None:
    hb, (a, b) = city
    url = module_redis.url
    rec = hold_series(hb, url, "left", a, b)

    async def crash_after_first(at: str, step: Step) -> None:
        if (at, step.dose) == ("sent", 0):
            raise Crash("gateway gone")

    with pytest.raises(Crash):
        with_book(hb, url, lambda bk: bk.confirm("left", "p", b"", no_rule), crash_after_first)
    half = audit(redis.Redis.from_url(url))
    assert half.ok and half.series_in_flight == 1  # in its protocol: not judged yet
    assert with_book(hb, url, lambda bk: bk.resume_stale(0, no_rule)) == 1
    assert [active(hb, d.provider_id, d.booking_id) for d in rec.doses] == [True, True]
    cancelled = with_book(hb, url, lambda bk: bk.cancel("left"))
    assert cancelled.state == "cancelled"
    assert [active(hb, d.provider_id, d.booking_id) for d in rec.doses] == [False, False]
    report = audit(redis.Redis.from_url(url))
    assert report.ok and report.series_in_flight == 0, report.summary()


def test_the_audit_catches_a_half_series_and_a_booking_its_rule_refuses(
    stack: tuple[Hexbook, list[str]], module_redis: EmbeddedRedis
) -> None:
    hb, (a, b) = stack
    url = module_redis.url
    rec = hold_series(hb, url, "whole", a, b)
    with_book(hb, url, lambda bk: bk.confirm("whole", "pat", b"d", no_rule))
    hb.cancel(rec.doses[1].booking_id, b, "vaccine")  # behind the series' back

    async def publish(_: SeriesBook) -> Rule:
        return await PolicyStore(_.redis).publish(Rule(service="vaccine", ages=(AgeBand(65),)))

    rule = with_book(hb, url, publish)

    async def seniors(_: str, __: str) -> Rule:
        return rule

    start = open_starts(hb, a)[1]
    old = Attestation(birth_date="1940-01-01")
    doses = [(a, "vaccine", start, routable_id(a, "vaccine"), routable_id(a, "vaccine"))]
    with_book(hb, url, lambda bk: bk.hold("one", planned(doses), 1, 600, old, seniors))
    done = with_book(hb, url, lambda bk: bk.confirm("one", "pat", b"d", seniors))
    assert hb.booking(a, "vaccine", done.doses[0].booking_id).rule_version == rule.version
    report = audit(redis.Redis.from_url(url))
    assert report.eligibility_checked == 1
    assert report.violations == ["series whole… is confirmed with 1 of 2 doses active"]
    # the version it recorded is changed under it (never done by hexbook): caught
    client = redis.Redis.from_url(url)
    tighter = Rule(service="vaccine", ages=(AgeBand(95),))
    client.hset("hexbook:rules:vaccine", str(rule.version), msgspec.msgpack.encode(tighter))
    again = audit(client)
    assert any("does not meet rule 'vaccine' version 1" in v for v in again.violations)
