"""Shards on a real local Ray with a real redis-server, under faults.

Invariants checked: no slot over capacity (1), no acknowledged booking lost (2),
retries with the same idempotency key book once (3), replay equals state (5)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest
import ray
import redis
import redis.asyncio as aioredis

from actors import journal
from actors.api import Hexbook
from actors.directory import default_shards
from actors.embedded_redis import EmbeddedRedis
from actors.shard_core import ShardCore
from engine.errors import HexbookError, Unavailable
from engine.provider import Provider
from engine.records import Booking
from engine.schedule import WEEKDAYS, WeeklyTemplate
from tests.dates import ahead

pytestmark = pytest.mark.usefixtures("ray_local")

# 48 slots a day of 2 places: enough that the load keeps booking through every fault.
TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 2)
SERVICE = "vaccine"
# Spread over Chicago so the providers land in different cells and shards.
POSITIONS = [
    (41.88, -87.63),
    (41.95, -87.70),
    (41.80, -87.60),
    (41.99, -87.81),
    (41.75, -87.55),
    (41.90, -87.75),
]


def providers() -> list[Provider]:
    return [
        Provider(
            provider_id=f"site-{i}",
            name=f"Site {i}",
            lat=lat,
            lng=lng,
            timezone="America/Chicago",
            services=(SERVICE,),
        )
        for i, (lat, lng) in enumerate(POSITIONS)
    ]


def setup_city(url: str, namespace: str, **kw: Any) -> tuple[Hexbook, dict[str, list[int]]]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    hb = Hexbook.connect(
        url, shards=2, namespace=namespace, shard_options={"sweep_seconds": 0.5}, **kw
    )
    starts = {}
    for p in providers():
        hb.provision(p, TEMPLATE, ahead(), days=2)
        grid = hb.slots(p.provider_id, SERVICE)
        starts[p.provider_id] = [
            grid["start"] + i * grid["slot_seconds"] for i, c in enumerate(grid["capacity"]) if c
        ]
    return hb, starts


def committed(hb: Hexbook) -> dict[str, journal.ShardSnapshot]:
    return {
        s: journal.decode_shard_snapshot(hb._call(s, "committed_state"))
        for s in hb.directory.shards
    }


def check_no_overbooking(states: dict[str, journal.ShardSnapshot]) -> int:
    import numpy as np

    slots = 0
    for snap in states.values():
        for cal in snap.calendars:
            cap = np.frombuffer(cal.capacity, np.uint16).astype(int)
            used = np.frombuffer(cal.booked, np.uint16).astype(int) + np.frombuffer(
                cal.held, np.uint16
            ).astype(int)
            assert (used <= cap).all(), f"{cal.provider_id} over capacity"
            slots += cap.size
    return slots


def known_holds(states: dict[str, journal.ShardSnapshot]) -> set[str]:
    """Every hold the committed state knows: live, confirmed or expired."""
    known: set[str] = set()
    for snap in states.values():
        for c in snap.calendars:
            known |= {h.hold_id for h in c.holds} | {b.hold_id for b in c.bookings}
            known |= {e.hold_id for e in c.expired_holds}
    return known


def assert_nothing_acknowledged_lost(clients: Clients, states: dict[str, Any]) -> None:
    live = active_bookings(states)
    lost = [b.booking_id for _, b, _ in clients.acked if b.booking_id not in live]
    assert lost == [], f"{len(lost)} acknowledged bookings lost"
    moved = [b.booking_id for _, b, _ in clients.acked if live[b.booking_id].start != b.start]
    assert moved == []
    missing = set(clients.acked_holds) - known_holds(states)
    assert missing == set(), f"{len(missing)} acknowledged holds lost"


def active_bookings(states: dict[str, journal.ShardSnapshot]) -> dict[str, Booking]:
    return {
        b.booking_id: b
        for s in states.values()
        for c in s.calendars
        for b in c.bookings
        if b.status == "active"
    }


class Clients:
    """Threads that hold and confirm random slots and record what was acknowledged."""

    def __init__(self, hb: Hexbook, starts: dict[str, list[int]], n: int = 6) -> None:
        self.hb, self.starts = hb, starts
        self.acked: list[tuple[str, Booking, str]] = []  # (confirm key, booking, provider)
        self.acked_holds: list[str] = []
        self.failures: list[tuple[str, float]] = []
        self.refused = 0
        self.unexpected: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(n)]

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            pid = rng.choice(sorted(self.starts))
            start = rng.choice(self.starts[pid])
            t0 = time.monotonic()
            try:
                hold = self.hb.hold(pid, SERVICE, start, ttl=600)
                with self.lock:
                    self.acked_holds.append(hold.hold_id)
                key = f"confirm-{hold.hold_id}"
                booking, _ = self.hb.confirm(hold.hold_id, pid, SERVICE, "ref", key=key)
                with self.lock:
                    self.acked.append((key, booking, pid))
            except (Unavailable, ray.exceptions.RayActorError) as exc:
                with self.lock:
                    self.failures.append((type(exc).__name__, time.monotonic() - t0))
            except HexbookError:
                with self.lock:
                    self.refused += 1  # slot full, hold expired...: a normal answer
            except Exception as exc:  # anything else is a bug: record it, the test fails
                with self.lock:
                    self.unexpected.append(repr(exc))

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)
        assert self.unexpected == [], self.unexpected[:5]


def test_crash_under_load_loses_no_acknowledged_booking(
    module_redis: EmbeddedRedis, namespace: str
) -> None:
    hb, starts = setup_city(module_redis.url, namespace)
    kills = 0
    with Clients(hb, starts) as clients:
        for _ in range(4):
            time.sleep(1.5)
            victim = random.choice(hb.directory.shards)
            ray.kill(ray.get_actor(victim, namespace=namespace), no_restart=False)
            kills += 1
        time.sleep(1.5)
    assert kills == 4
    assert len(clients.acked) > 20, "the load did not get going"
    states = committed(hb)
    check_no_overbooking(states)
    assert_nothing_acknowledged_lost(clients, states)
    live = active_bookings(states)
    # A client that timed out retries with the same key: the same booking, nothing new.
    key, booking, pid = clients.acked[0]
    booked_before = len(live)
    again, _ = hb.confirm(booking.hold_id, pid, SERVICE, "ref", key=key)
    assert again.booking_id == booking.booking_id
    assert len(active_bookings(committed(hb))) == booked_before


def test_redis_down_fails_fast_then_recovers(tmp_path: Any, namespace: str) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        hb, starts = setup_city(server.url, namespace, retry_seconds=0.0)
        with Clients(hb, starts, n=6) as clients:
            down_failures = 0
            for _ in range(2):  # crash Redis twice under load
                time.sleep(1.5)
                before = len(clients.failures)
                server.kill()
                time.sleep(2.0)
                down_failures += len(clients.failures) - before
                server.start()
            time.sleep(2.0)
        assert down_failures > 0, "nothing failed while Redis was down"
        # Fail fast: no call hung while Redis was gone (bound: 2 s Redis timeout + slack).
        assert max(d for _, d in clients.failures) < 10.0
        assert {n for n, _ in clients.failures} <= {"Unavailable", "RayTaskError(Unavailable)"}
        hb.retry_seconds = 30.0
        states = committed(hb)
        check_no_overbooking(states)
        assert_nothing_acknowledged_lost(clients, states)
        assert len(clients.acked) > 10
        # After Redis came back, the shards serve writes again: cancel an acknowledged
        # booking (the load may have filled every slot) and book its place anew.
        _, booking, pid = clients.acked[-1]
        hb.cancel(booking.booking_id, pid, SERVICE)
        hold = hb.hold(pid, SERVICE, booking.start)
        assert hb.confirm(hold.hold_id, pid, SERVICE, "after")[0].start == booking.start
        hb.close()
    finally:
        server.stop()


def test_replay_on_a_real_shard_equals_its_state(
    module_redis: EmbeddedRedis, namespace: str
) -> None:
    hb, starts = setup_city(module_redis.url, namespace)
    rng = random.Random(7)
    for i in range(120):
        pid = rng.choice(sorted(starts))
        try:
            hold = hb.hold(pid, SERVICE, rng.choice(starts[pid]), ttl=rng.choice([1, 600]))
            if i % 3:
                booking, _ = hb.confirm(hold.hold_id, pid, SERVICE, "r")
                if i % 5 == 0:
                    hb.cancel(booking.booking_id, pid, SERVICE)
                elif i % 7 == 0:
                    hb.reschedule(booking.booking_id, pid, SERVICE, rng.choice(starts[pid]))
            elif i % 2:
                hb.release(hold.hold_id, pid, SERVICE)
        except HexbookError:
            pass
        if i == 60:
            for shard in hb.directory.shards:
                hb._call(shard, "write_snapshot")
    time.sleep(1.5)  # let a sweep expire the 1-second holds
    for shard, live in committed(hb).items():

        async def rebuild(name: str = shard) -> bytes:
            core = ShardCore(name, aioredis.from_url(module_redis.url))
            await core.recover()
            await core.redis.aclose()
            return journal.encode(core.shard_snapshot())

        assert asyncio.run(rebuild()) == journal.encode(live), f"{shard} replay differs"


def test_directory_places_moves_and_dedicates(module_redis: EmbeddedRedis, namespace: str) -> None:
    hb, starts = setup_city(module_redis.url, namespace)
    placed = hb.directory.providers()
    assert set(placed) == {p.provider_id for p in providers()}
    assert set(placed.values()) <= set(hb.directory.shards)
    cells = hb.directory.cells()
    assert all(shard in hb.directory.shards for shard in cells.values())
    # Book something, then move that provider's cell to the other shard.
    pid = sorted(starts)[0]
    hold = hb.hold(pid, SERVICE, starts[pid][0])
    booking, _ = hb.confirm(hold.hold_id, pid, SERVICE, "r")
    p = next(x for x in providers() if x.provider_id == pid)
    cell = p.cell(hb.directory.resolution)
    other = next(s for s in hb.directory.shards if s != placed[pid])
    moved = hb.move_cell(cell, other)
    assert pid in moved
    assert hb.directory.shard_of(pid) == other
    assert hb.directory.cells()[cell] == other
    assert booking.booking_id in active_bookings({other: committed(hb)[other]})
    grid = hb.slots(pid, SERVICE)
    assert grid["booked"][(starts[pid][0] - grid["start"]) // grid["slot_seconds"]] == 1
    # A stadium gets a shard of its own.
    stadium = Provider(
        provider_id="stadium",
        name="United Center",
        lat=41.8807,
        lng=-87.6742,
        timezone="America/Chicago",
        services=(SERVICE,),
    )
    shard = hb.provision(stadium, TEMPLATE, ahead(), days=1, dedicated=True)
    assert shard == "dedicated-stadium"
    assert hb.directory.shard_of("stadium") == "dedicated-stadium"
    info = hb._call(shard, "info")
    assert info["providers"] == ["stadium"]


def test_default_shards_leave_a_core_to_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, shards in [(1, 1), (2, 1), (4, 3), (16, 15)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert default_shards() == shards


def test_a_new_directory_takes_the_default_and_an_existing_one_keeps_its_shards(
    module_redis: EmbeddedRedis, namespace: str
) -> None:
    client = redis.Redis.from_url(module_redis.url)
    client.flushdb()
    first = Hexbook.connect(module_redis.url, namespace=namespace)
    assert first.directory.shards == [f"shard-{i}" for i in range(default_shards())]
    # A restart with another count (or another machine's default) keeps the map, so no
    # provider's cell changes shard behind its bookings.
    again = Hexbook.connect(module_redis.url, shards=default_shards() + 2, namespace=namespace)
    assert again.directory.shards == first.directory.shards
    assert (
        client.hget("hexbook:directory:meta", "shards") == ",".join(first.directory.shards).encode()
    )
    first.close()
    again.close()
    client.close()
