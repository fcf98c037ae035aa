"""hexbook benchmarks: print figures and their targets, measured in one run.

    make bench                 # every part
    .venv/bin/python tests/bench/run.py --part engine --rounds 7

The machine is shared and noisy, so throughput is measured over several rounds and the
best and the median are printed (best is the least disturbed; the median is typical).
Nothing here is asserted by the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine import codec  # noqa: E402
from engine.calendar import Calendar  # noqa: E402
from engine.records import Command, ConfirmHold, PlaceHold  # noqa: E402
from engine.schedule import WEEKDAYS, WeeklyTemplate  # noqa: E402

# Figures other tools read (hexbook-sim --bench): written to build/bench.json.
FIGURES: dict[str, float] = {}
FIGURES_FILE = ROOT / "build" / "bench.json"

TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 2)
FIRST_DAY = date.today() + timedelta(days=7)  # ahead: shards roll the past away


def _calendars(n: int) -> list[Calendar]:
    return [
        Calendar.from_template(f"p{i}", "vaccine", "America/Chicago", TEMPLATE, FIRST_DAY, 14)
        for i in range(n)
    ]


def hold_confirm_round(pairs_per_calendar: int, calendars: int, encode: bool) -> float:
    """One round: every calendar gets holds then confirms on its open slots; returns pairs/s.

    Ids are random 128-bit tokens made beforehand (they arrive with the request in real
    life); commands are built inside the timed loop, events are drained per calendar as
    a shard drains a batch, and (``encode``) turned into one msgpack journal entry."""
    cals = _calendars(calendars)
    plans = []
    for cal in cals:
        open_starts = cal.starts()[cal.capacity > 0]
        starts = np.repeat(open_starts, 2)[:pairs_per_calendar].tolist()
        ids = [
            (
                secrets.token_urlsafe(16),
                secrets.token_urlsafe(16),
                secrets.token_urlsafe(16),
                secrets.token_urlsafe(16),
            )
            for _ in starts
        ]
        plans.append((cal, starts, ids))
    gc.collect()
    gc.freeze()  # the harness's own ids are not the engine's: keep them out of GC scans
    t0 = time.perf_counter()
    n = 0
    for cal, starts, ids in plans:
        handle, pid, now = cal.handle, cal.provider_id, cal.start - 3600
        for start, (hk, hid, ck, bid) in zip(starts, ids, strict=True):
            handle(PlaceHold(pid, "vaccine", hk, now, hid, start, 1, 300))
            handle(ConfirmHold(pid, "vaccine", ck, now, hid, bid, b"", "patient"))
            n += 1
        events = cal.drain()
        if encode:
            codec.encode(events)
    elapsed = time.perf_counter() - t0
    gc.unfreeze()
    return n / elapsed


def _measure(fn: Callable[[], float], rounds: int) -> tuple[float, float]:
    results = [fn() for _ in range(rounds)]
    return max(results), statistics.median(results)


MEMORY_PROBE = """
import gc, json, sys, psutil
sys.path.insert(0, {root!r})
from datetime import date
from engine.calendar import Calendar
from engine.schedule import WEEKDAYS, WeeklyTemplate
import numpy as np
proc = psutil.Process()
t = WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 2)
Calendar.from_template("warm", "vaccine", "America/Chicago", t, date(2026, 3, 2), 14)
gc.collect()
before = proc.memory_info().rss
cals = [Calendar.from_template(f"p{{i}}", "vaccine", "America/Chicago", t,
                               date(2026, 3, 2), 14) for i in range({n})]
gc.collect()
after = proc.memory_info().rss
print(json.dumps({{"before": before, "after": after, "slots": cals[0].n_slots}}))
"""


def memory_of_calendars(n: int) -> dict[str, int]:
    """RSS of a fresh process before and after building ``n`` calendars."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE.format(root=str(ROOT), n=n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def part_engine(rounds: int) -> None:
    print("== engine: in-process, one core")
    best, median = _measure(lambda: hold_confirm_round(400, 500, encode=False), rounds)
    print(
        f"hold+confirm pairs/s (events + idempotency on)   best {best:>10,.0f}  "
        f"median {median:>10,.0f}   target >= 250,000  -> {best / 250_000:.2f}x"
    )
    best_e, median_e = _measure(lambda: hold_confirm_round(400, 500, encode=True), rounds)
    print(
        f"  ... and events msgpack-encoded for the journal best {best_e:>10,.0f}  "
        f"median {median_e:>10,.0f}"
    )
    mem = memory_of_calendars(10_000)
    delta = (mem["after"] - mem["before"]) / 2**20
    print(
        f"RSS of 10,000 calendars x {mem['slots']} slots (14 days, 15 min)  "
        f"{delta:7.1f} MB   target < 150 MB  -> {delta / 150:.2f} of budget "
        f"(process total {mem['after'] / 2**20:.1f} MB)"
    )
    per_day = (mem["after"] - mem["before"]) / (10_000 * 14)
    print(
        f"memory per calendar-day held (96 slots of 15 min, 08:00-20:00)  "
        f"{per_day:7,.0f} bytes   ({per_day / (mem['slots'] / 14):.1f} bytes per slot)"
    )
    FIGURES["bytes_per_calendar_day"] = per_day


def _redis_reference(url: str) -> tuple[float, float]:
    """XADD/s on this Redis: one at a time, and pipelined in MULTI batches of 1,000."""
    import redis

    client = redis.Redis.from_url(url)
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        client.xadd("bench:single", {"d": b"x" * 60, "i": i})
    single = n / (time.perf_counter() - t0)
    batches = 60
    t0 = time.perf_counter()
    for _ in range(batches):
        pipe = client.pipeline(transaction=True)
        for i in range(1000):
            pipe.xadd("bench:piped", {"d": b"x" * 60, "i": i})
        pipe.execute()
    piped = batches * 1000 / (time.perf_counter() - t0)
    client.delete("bench:single", "bench:piped")
    client.close()
    return single, piped


def _redis_journal_capacity(url: str, seconds: float = 3.0, batch: int = 200) -> float:
    """Journal events/s one Redis makes durable (appendfsync always) when two writers
    commit as shards do: one MULTI per batch of ``batch`` real hold and booking events
    (sealed as a shard seals them), with its availability entry. What one Redis server
    carries in the capacity plan (hexbook-sim --bench: redis_events_per_second)."""
    import threading

    import redis

    from actors import journal
    from actors.journal import CalendarEvents, JournalBatch
    from actors.sealing import Keyring

    cal = _calendars(1)[0]
    now = int(time.time())
    starts = [cal.start + i * cal.slot_seconds for i in range(cal.n_slots) if cal.capacity[i]]
    for n in range(batch // 2):
        hid, bid = f"h{n:06d}{secrets.token_hex(8)}", f"b{n:06d}{secrets.token_hex(8)}"
        cal.handle(PlaceHold("p0", "vaccine", secrets.token_hex(8), now, hid, starts[n], 1, 300))
        cal.handle(
            ConfirmHold("p0", "vaccine", secrets.token_hex(8), now, hid, bid, b"d" * 32, "r")
        )
    events = cal.drain()
    ring = Keyring.generate()
    blob = journal.seal_batch(JournalBatch([CalendarEvents("p0", "vaccine", events)]), ring, "b")
    counts = [0, 0]
    ends = time.monotonic() + seconds

    def writer(i: int) -> None:
        client = redis.Redis.from_url(url)
        while time.monotonic() < ends:
            pipe = client.pipeline(transaction=True)
            pipe.xadd(f"bench:journal:{i}", {"b": blob})
            pipe.xadd("bench:availability", {"s": b"x" * 200}, maxlen=10_000, approximate=True)
            pipe.execute()
            counts[i] += len(events)
        client.delete(f"bench:journal:{i}", "bench:availability")
        client.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def durable_holds(
    hb: object, starts: dict[str, list[int]], batch: int, in_flight: int, seconds: float
) -> tuple[float, int]:
    """Holds/s acknowledged by the shards (each after its group commit)."""
    import ray

    from actors.api import Hexbook

    assert isinstance(hb, Hexbook)
    by_shard: dict[str, list[str]] = {}
    for pid in starts:
        by_shard.setdefault(hb.shard_of(pid), []).append(pid)
    counter = iter(range(10**9))

    def make_batch(pids: list[str]) -> bytes:
        cmds: list[Command] = []
        for _ in range(batch):
            n = next(counter)
            pid = pids[n % len(pids)]
            slots = starts[pid]
            cmds.append(
                PlaceHold(
                    pid,
                    "vaccine",
                    f"k{n}",
                    0,
                    f"h{n}",
                    slots[(n // len(pids)) % len(slots)],
                    1,
                    10**9,
                )
            )
        return codec.encode_commands(cmds)

    pending: dict[object, str] = {}
    done = ok = 0
    t0 = time.perf_counter()
    for shard in by_shard:
        for _ in range(in_flight):
            pending[hb.shard(shard).submit.remote(make_batch(by_shard[shard]))] = shard
    while time.perf_counter() - t0 < seconds:
        ready, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(ready[0])
        outcomes = ray.get(ready[0])
        done += len(outcomes)
        ok += sum(1 for o in outcomes if not isinstance(o, Exception))
        pending[hb.shard(shard).submit.remote(make_batch(by_shard[shard]))] = shard
    elapsed = time.perf_counter() - t0
    for ref in pending:
        ray.get(ref)
    return ok / elapsed, done - ok


async def _build_journal(url: str, calendars: int, events: int) -> None:
    import random

    import redis.asyncio as aioredis

    from actors.shard_core import ShardCore
    from engine.provider import Provider
    from engine.records import ReleaseHold

    core = ShardCore("bench-recovery", aioredis.from_url(url), snapshot_every_events=10**12)
    await core.recover()
    cals = _calendars(calendars)
    for i, cal in enumerate(cals):
        p = Provider(
            provider_id=cal.provider_id,
            name="x",
            lat=41.88,
            lng=-87.63,
            timezone="America/Chicago",
            services=("vaccine",),
        )
        core.add_calendars(p, [cal.snapshot()])
        if i % 1000 == 999:
            await core.commit()
    await core.commit()
    await core.write_snapshot()
    open_starts = cals[0].starts()[cals[0].capacity > 0].tolist()
    rng = random.Random(1)
    made, n = 0, 0
    while made < events:
        cmds: list[PlaceHold | ReleaseHold] = []
        for _ in range(5000):
            pid = f"p{rng.randrange(calendars)}"
            cmds.append(
                PlaceHold(pid, "vaccine", None, 0, f"h{n}", rng.choice(open_starts), 1, 10**9)
            )
            cmds.append(ReleaseHold(pid, "vaccine", None, 1, f"h{n}"))
            n += 1
        core.apply(cmds)
        made += len(cmds)
        await core.commit()
    await core.redis.aclose()


async def _ninety_days(url: str, calendars: int = 500, days: int = 91) -> list[str]:
    """A shard's life over ``days`` simulated days, run on :class:`ShardCore` directly
    with the shard's own roll: ``calendars`` calendars with a 28-day horizon, every day
    10 bookings per calendar (hold + confirm, idempotency keys on) 1-14 days ahead and
    one in ten of them cancelled, a snapshot every week. At each week's end (a week of
    journal after the last snapshot) a second ShardCore recovers from Redis and is timed.
    Returns the table's lines."""
    import random

    import redis.asyncio as aioredis

    from actors import journal
    from actors.shard_core import ShardCore
    from engine.provider import Provider
    from engine.records import CancelBooking

    client = aioredis.from_url(url)
    core = ShardCore("bench-ninety", client, snapshot_every_events=10**12)
    await core.recover()
    zone = "America/Chicago"
    first = date.today()
    for i in range(calendars):
        p = Provider(
            provider_id=f"n{i}",
            name="x",
            lat=41.88,
            lng=-87.63,
            timezone=zone,
            services=("vaccine",),
        )
        cal = Calendar.from_template(f"n{i}", "vaccine", zone, TEMPLATE, first, 28, horizon_days=28)
        core.add_calendars(p, [cal.snapshot()])
    await core.commit()
    await core.write_snapshot()
    rng = random.Random(7)
    morning = int(core.calendars[("n0", "vaccine")].start)  # the first day's opening
    booked: list[tuple[str, str]] = []
    lines = [
        "  day  calendars  slots held  live bookings  snapshot KB  journal  recovery s",
    ]
    n = 0
    for day in range(days):
        now = morning + day * 86_400
        while core.roll(now) == 200:
            pass
        cmds: list[Command | CancelBooking] = []
        for i in range(calendars):
            cal = core.calendars[(f"n{i}", "vaccine")]
            starts = cal.starts()
            ahead = starts[(starts >= now + 86_400) & (starts < now + 15 * 86_400)]
            for start in rng.sample(ahead.tolist(), 10):
                hid, bid = f"h{n}", f"b{n}"
                cmds.append(PlaceHold(f"n{i}", "vaccine", f"kh{n}", now, hid, start, 1, 600))
                cmds.append(ConfirmHold(f"n{i}", "vaccine", f"kc{n}", now + 30, hid, bid, b"", "p"))
                booked.append((f"n{i}", bid))
                n += 1
        for pid, bid in rng.sample(booked[-calendars * 10 :], calendars):
            cmds.append(CancelBooking(pid, "vaccine", f"kx{bid}", now + 60, bid))
        for k in range(0, len(cmds), 5000):
            core.apply(cmds[k : k + 5000])
            await core.commit()
        if day % 7 == 6:
            journal_len = await client.xlen(journal.journal_key(core.name))
            other = ShardCore("bench-ninety", aioredis.from_url(url))
            stats = await other.recover()
            await other.redis.aclose()
            snap = await client.strlen(journal.snapshot_key(core.name))
            live = sum(
                sum(1 for b in c.bookings.values() if b.status == "active")
                for c in core.calendars.values()
            )
            held = sum(c.n_slots for c in core.calendars.values())
            lines.append(
                f"  {day + 1:>3}  {len(core.calendars):>9}  {held:>10,}  {live:>13,}  "
                f"{snap / 1024:>11,.0f}  {journal_len:>7}  {stats.seconds:>10.2f}"
            )
            FIGURES["recovery_seconds_after_90_days"] = stats.seconds
            await core.write_snapshot()
    await client.aclose()
    return lines


async def _recover(url: str) -> tuple[float, int, int]:
    import redis.asyncio as aioredis

    from actors.shard_core import ShardCore

    core = ShardCore("bench-recovery", aioredis.from_url(url))
    stats = await core.recover()
    await core.redis.aclose()
    return stats.seconds, stats.calendars, stats.events


def part_actors(rounds: int) -> None:
    import asyncio
    import tempfile
    import uuid

    import ray

    from actors.api import Hexbook
    from actors.embedded_redis import EmbeddedRedis
    from engine.provider import Provider

    print("== actors: 2 shards on local Ray (num_cpus=2), redis-server appendfsync always")
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data) as server:
        single, piped = _redis_reference(server.url)
        print(
            f"reference: XADD one at a time {single:>9,.0f}/s   pipelined MULTI x1000 "
            f"{piped:>9,.0f}/s"
        )
        capacity = statistics.median(_redis_journal_capacity(server.url) for _ in range(3))
        FIGURES["redis_events_per_second"] = capacity
        print(
            f"one Redis, 2 writers committing batches of 200 sealed events: "
            f"{capacity:>9,.0f} journal events/s (the planner's Redis capacity)"
        )
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        from tests.raycluster import start_local_ray

        start_local_ray(ns)
        try:
            hb = Hexbook.connect(
                server.url,
                shards=2,
                namespace=ns,
                shard_options={"sweep_seconds": 0, "snapshot_every_events": 10**9},
            )
            big = WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 500)
            starts = {}
            for i in range(40):
                p = Provider(
                    provider_id=f"site-{i}",
                    name=f"Site {i}",
                    lat=41.70 + (i % 8) * 0.04,
                    lng=-87.85 + (i // 8) * 0.06,
                    timezone="America/Chicago",
                    services=("vaccine",),
                )
                hb.provision(p, big, FIRST_DAY, 14)
                g = hb.slots(p.provider_id, "vaccine")
                starts[p.provider_id] = [
                    g["start"] + k * g["slot_seconds"] for k, c in enumerate(g["capacity"]) if c
                ]
            shards = sorted({hb.shard_of(pid) for pid in starts})
            print(f"{len(starts)} providers over shards {shards}")
            results = [
                durable_holds(hb, starts, batch=1000, in_flight=3, seconds=4.0)
                for _ in range(rounds)
            ]
            best = max(r[0] for r in results)
            median = statistics.median(r[0] for r in results)
            errors = sum(r[1] for r in results)
            FIGURES["shard_ops_per_second"] = median / len(shards)
            print(
                f"durable holds/s (batches of 1,000, 3 in flight per shard)  best "
                f"{best:>9,.0f}  median {median:>9,.0f}   target >= 30,000 -> "
                f"{best / 30_000:.2f}x   (refused: {errors})"
            )
            victim = hb.shard(shards[0])
            pid = next(p for p in starts if hb.shard_of(p) == shards[0])
            ray.kill(victim, no_restart=False)
            t0 = time.perf_counter()
            hb.slots(pid, "vaccine")
            print(
                f"shard killed -> restarted by Ray, recovered and serving in "
                f"{time.perf_counter() - t0:.2f} s (its journal holds the holds above)"
            )
        finally:
            ray.shutdown()
        print("building a journal: 10,000 calendars (snapshot) + 1,000,000 events after it")
        asyncio.run(_build_journal(server.url, 10_000, 1_000_000))
        secs, cals, events = asyncio.run(_recover(server.url))
        print(
            f"recovery: {cals:,} calendars + {events:,} journal events in {secs:.2f} s   "
            f"target < 5 s -> {secs / 5:.2f} of budget"
        )
        print(
            "91 simulated days of one shard: 500 calendars, horizon 28 days, 5,000 "
            "bookings a day, 10% cancelled, a snapshot a week; recovery timed at each "
            "week's end (a week of journal to replay)"
        )
        lines = asyncio.run(_ninety_days(server.url))
        print("\n".join(lines))
        horizon = float(lines[4].split()[-1])  # day 28: the first horizon is full
        last = float(lines[-1].split()[-1])
        print(
            f"recovery after 91 days / after 28 days: {last:.2f} / {horizon:.2f} s "
            f"-> {last / horizon:.2f}x (flat is ~1)"
        )


def part_gateway(rounds: int) -> None:
    from tests.bench.gateway_load import part_gateway as run

    FIGURES.update(run(rounds))


def part_launch(rounds: int) -> None:
    from tests.bench.launch import part_launch as run

    FIGURES.update(run())


def part_notify(rounds: int) -> None:
    from tests.bench.notify_load import part_notify as run

    FIGURES.update(run(rounds))


def part_pages(rounds: int) -> None:
    from tests.bench.pages_load import part_pages as run

    FIGURES.update(run(rounds))


def part_peers(rounds: int) -> None:
    from tests.bench.peers_load import part_peers as run

    FIGURES.update(run(rounds))


def part_scaling(rounds: int) -> None:
    from tests.bench.scaling_load import part_scaling as run

    FIGURES.update(run(rounds))


PARTS = {
    "engine": part_engine,
    "actors": part_actors,
    "gateway": part_gateway,
    "launch": part_launch,
    "notify": part_notify,
    "pages": part_pages,
    "peers": part_peers,
    "scaling": part_scaling,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run hexbook's benchmarks and print figures against their targets.",
    )
    parser.add_argument(
        "--part",
        choices=sorted(PARTS),
        action="append",
        help="run only this part (repeatable); default: all",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds per throughput figure (default 5; best and median shown)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for name in args.part or PARTS:
        PARTS[name](args.rounds)
    if FIGURES:
        FIGURES_FILE.parent.mkdir(exist_ok=True)
        known = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
        FIGURES_FILE.write_text(json.dumps({**known, **FIGURES}, indent=2) + "\n")
        print(f"figures for hexbook-sim --bench: {FIGURES_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
