"""The rolling horizon on real shards (real Ray, real Redis): days pass on the stack's
clock, calendars roll on by themselves, past bookings go to the archive and stay
readable, and a shard killed afterwards comes back with the same window."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import ray
import redis

from actors import archive
from actors.api import Hexbook
from actors.embedded_redis import EmbeddedRedis
from engine.provider import Provider
from engine.schedule import WEEKDAYS, WeeklyTemplate, local_midnight
from tests.actors.test_shard_faults import SERVICE
from tests.polling import until

pytestmark = pytest.mark.usefixtures("ray_local")
TZ = "America/Los_Angeles"
TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "09:00", "11:00", 2)
DAY = 86_400


@pytest.fixture
def west(module_redis: EmbeddedRedis, namespace: str) -> Hexbook:
    client = redis.Redis.from_url(module_redis.url)
    client.flushdb()
    client.close()
    hb = Hexbook.connect(
        module_redis.url, shards=1, namespace=namespace, shard_options={"roll_seconds": 0.2}
    )
    site = Provider(
        provider_id="seattle-1", name="Seattle", lat=47.61, lng=-122.33, timezone=TZ,
        services=(SERVICE,),
    )  # fmt: skip
    today = datetime.now(ZoneInfo(TZ)).date()
    hb.provision(site, TEMPLATE, today, days=3, horizon_days=5)
    return hb


def window(hb: Hexbook) -> tuple[int, int]:
    g = hb.slots("seattle-1", SERVICE)
    return g["start"], g["start"] + len(g["capacity"]) * g["slot_seconds"]


def test_days_pass_and_the_calendar_rolls_on_by_itself(west: Hexbook) -> None:
    today = datetime.now(ZoneInfo(TZ)).date()
    # Within seconds the calendar reaches its horizon: today + 5 days.
    until(lambda: window(west)[1] == local_midnight(TZ, today + timedelta(days=5)))
    g = west.slots("seattle-1", SERVICE)
    first = next(
        g["start"] + i * g["slot_seconds"]
        for i, c in enumerate(g["capacity"])
        if c and g["start"] + i * g["slot_seconds"] > time.time() + 3600
    )
    hold = west.hold("seattle-1", SERVICE, first)
    booking, token = west.confirm(hold.hold_id, "seattle-1", SERVICE, "patient-1")
    assert token

    # Ten days later (on the stack's clock), in one step.
    west.set_clock(offset=10 * DAY)
    later = today + timedelta(days=10)
    want = (
        local_midnight(TZ, later - timedelta(days=1)),
        local_midnight(TZ, later + timedelta(days=5)),
    )
    until(lambda: window(west) == want)
    g = west.slots("seattle-1", SERVICE)
    # The new days are the template's: two hours of 15-minute slots a day, 2 places each.
    assert sum(g["capacity"]) == 6 * 8 * 2 and set(g["capacity"]) == {0, 2}

    # The booking's day left the window: it is in the archive, and still readable.
    client = redis.Redis.from_url(west.redis_url)
    archived = {b.booking_id for _, _, b in archive.export(client)}
    assert booking.booking_id in archived
    assert west.booking("seattle-1", SERVICE, booking.booking_id) == booking

    # A shard killed now comes back with the same window and the archive intact. (The
    # kill lands a moment later: until then the old process still answers, so the wait
    # is for a shard in another process.)
    actor = west.shard(west.shard_of("seattle-1"))
    before = ray.get(actor.info.remote())["pid"]
    ray.kill(actor, no_restart=False)

    def restarted() -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = ray.get(actor.info.remote(), timeout=30)
        except Exception:  # the kill landed, the restart has not
            return None
        return info if info["pid"] != before else None

    info = until(restarted)
    assert info is not None
    until(lambda: _ok(lambda: window(west)) == want)
    assert west.booking("seattle-1", SERVICE, booking.booking_id) == booking
    # ... and on the stack's clock still (it kept it in Redis): ten days on, to the day.
    assert abs(info["clock"] - (time.time() + 10 * DAY)) < 60, info
    client.close()


def test_memory_stays_flat_as_months_pass(west: Hexbook) -> None:
    sizes = []
    for month in range(1, 5):
        west.set_clock(offset=month * 30 * DAY)
        day = datetime.fromtimestamp(west.clock.seconds(), UTC).astimezone(ZoneInfo(TZ)).date()
        end = local_midnight(TZ, day + timedelta(days=5))
        until(lambda end=end: window(west)[1] == end)
        start, end = window(west)
        sizes.append(end - start)
        snap = ray.get(west.shard(west.shard_of("seattle-1")).committed_state.remote())
        assert len(snap) < 20_000, len(snap)
    # Keep a day and the horizon: 6 days (give or take an hour of DST).
    assert all(abs(s - 6 * DAY) <= 3600 for s in sizes), sizes


def _ok(call: Any) -> Any:
    try:
        return call()
    except Exception:
        return None
