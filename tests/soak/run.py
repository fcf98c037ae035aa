"""The soak: a real stack runs for months on an accelerated clock (``make soak``).

    make soak                                     # 90 days, 6 s of real time a day
    .venv/bin/python tests/soak/run.py --days 30 --seconds-per-day 4

One process hosts the gateway (uvicorn in a thread, as the tests serve it); Ray and a
redis-server of its own (``appendfsync always``) run beside it, the shards with their
own processes. The stack's clock (:class:`actors.clock.Clock`) runs ``86400 /
seconds-per-day`` times as fast as the wall, for every part: shards roll their calendars
at each local midnight, the search index moves its window, holds expire.

What happens, day after day:

- day 0: 300 sites with weekly templates (15-minute slots, kept 28 days ahead), and a
  publisher's SMART feed of 20 more sites with a rolling 14-day window, imported by the
  gateway's scheduler once a simulated day;
- day 1: a launch, clients booking as fast as they can; after it, a steady stream:
  search, hold, book, and a cancellation for one booking in ten;
- every simulated week: the resident memory of the gateway, the shard and Redis; the
  shard's snapshot size and journal length, the bookings archived; a shard killed and
  the time it took to recover; every acknowledged booking read back with its token.

At the end the audit reads every journal, snapshot and the archive: no slot over
capacity, every acknowledged booking found. The table is printed; the run exits 1 if a
booking was lost, a slot overbooked, or memory or recovery time grew after the first
horizon (28 days) by more than the tolerance (25%, and 40 MB of RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402
import redis  # noqa: E402

from actors import archive, journal  # noqa: E402
from actors.api import Hexbook  # noqa: E402
from actors.audit import audit  # noqa: E402
from actors.embedded_redis import EmbeddedRedis  # noqa: E402
from actors.sealing import Keyring  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.demo import demo_city  # noqa: E402
from gateway.keys import KeyStore  # noqa: E402
from gateway.server import in_thread  # noqa: E402
from gateway.settings import Settings  # noqa: E402

DAY = 86_400
TZ = "America/Chicago"
SITES, FEED_SITES = 300, 20
HORIZON = 28
MB = 1 << 20


@dataclass
class Week:
    week: int
    day: int
    gateway_mb: float
    shard_mb: float
    redis_mb: float
    snapshot_kb: float
    journal: int
    slots: int
    archived: int
    recovery_s: float
    acked: int
    found: int


@dataclass
class Load:
    """What the clients did and were told."""

    acks: list[dict[str, Any]] = field(default_factory=list)
    bookings: dict[str, str] = field(default_factory=dict)  # id -> token
    cancelled: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


class Feed:
    """A publisher's rolling SMART feed: FEED_SITES sites, the next 14 local days on the
    stack's clock, 09:00-12:00 in 15-minute slots of 3 places."""

    def __init__(self, hb: Hexbook) -> None:
        self.hb = hb
        self.rng = random.Random(7)
        self.sites = [
            (f"p{i}", 41.70 + self.rng.random() * 0.3, -87.85 + self.rng.random() * 0.3)
            for i in range(FEED_SITES)
        ]

    def file(self, name: str, base: str) -> bytes | None:
        ext = "http://fhir-registry.smarthealthit.org/StructureDefinition/"
        if name == "$bulk-publish":
            out = [
                {"type": t, "url": f"{base}/{t.lower()}s.ndjson"}
                for t in ("Location", "Schedule", "Slot")
            ]
            return json.dumps({"transactionTime": "", "request": "", "output": out}).encode()
        lines: list[dict[str, Any]] = []
        if name == "locations.ndjson":
            lines = [
                {
                    "resourceType": "Location",
                    "id": s,
                    "name": f"Feed site {s}",
                    "position": {"latitude": lat, "longitude": lng},
                    "address": {"state": "IL"},
                }
                for s, lat, lng in self.sites
            ]
        elif name == "schedules.ndjson":
            lines = [
                {
                    "resourceType": "Schedule",
                    "id": f"s-{s}",
                    "actor": [{"reference": f"Location/{s}"}],
                }
                for s, _, _ in self.sites
            ]
        elif name == "slots.ndjson":
            now = self.hb.clock.seconds()
            today = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(TZ)).date()
            for s, _, _ in self.sites:
                for d in range(14):
                    day = today + timedelta(days=d)
                    nine = datetime(day.year, day.month, day.day, 9, tzinfo=ZoneInfo(TZ))
                    for q in range(12):
                        start = nine + timedelta(minutes=15 * q)
                        lines.append(
                            {
                                "resourceType": "Slot",
                                "id": f"{s}-{day}-{q}",
                                "schedule": {"reference": f"Schedule/s-{s}"},
                                "status": "free",
                                "start": start.isoformat(),
                                "end": (start + timedelta(minutes=15)).isoformat(),
                                "extension": [{"url": ext + "slot-capacity", "valueInteger": 3}],
                            }
                        )
        else:
            return None
        return "\n".join(json.dumps(x) for x in lines).encode()


def serve_feed(feed: Feed) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            body = feed.file(self.path.split("?")[0].lstrip("/"), base)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Cache-Control", "max-age=0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def client(
    url: str, key: str, load: Load, stop: asyncio.Event, rng: random.Random, pace: float | None
) -> None:
    """Search near a random point, hold the first free slot, book it; now and then cancel
    an earlier booking. ``pace``: seconds between rounds (None: as fast as it can)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        while not stop.is_set():
            try:
                await _one_round(http, load, rng)
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
            if pace:
                await asyncio.sleep(rng.expovariate(1 / pace))


async def _one_round(http: httpx.AsyncClient, load: Load, rng: random.Random) -> None:
    lat, lng = 41.70 + rng.random() * 0.32, -87.90 + rng.random() * 0.38
    found = await http.get(
        "/v1/search",
        params={"lat": lat, "lng": lng, "radius_km": 8, "service": "covid-vaccine", "limit": 5},
    )
    load.count(found.status_code)
    results = found.json().get("results", []) if found.status_code == 200 else []
    if not results:
        return
    pick = rng.choice(results)
    hold = await http.post(
        "/v1/holds",
        json={
            "provider_id": pick["provider_id"],
            "service": "covid-vaccine",
            "start": pick["next_slots"][0]["start"],
        },
    )
    load.count(hold.status_code)
    if hold.status_code != 201:
        return
    booked = await http.post(
        "/v1/bookings", json={"hold_id": hold.json()["hold_id"], "patient": {"reference": "soak"}}
    )
    load.count(booked.status_code)
    if booked.status_code == 201:
        b = booked.json()
        load.bookings[b["booking_id"]] = b["booking_token"]
        load.acks.append({"op": "booked", "booking_id": b["booking_id"]})
    if load.bookings and rng.random() < 0.1:
        bid = rng.choice(list(load.bookings))
        if bid not in load.cancelled:
            r = await http.delete(
                f"/v1/bookings/{bid}", headers={"X-Booking-Token": load.bookings[bid]}
            )
            load.count(r.status_code)
            if r.status_code == 204:
                load.cancelled.add(bid)
                load.acks.append({"op": "cancelled", "booking_id": bid})


def rss(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except psutil.Error:
        return float("nan")


def measure(
    hb: Hexbook, server: EmbeddedRedis, client_: redis.Redis, load: Load, week: int, day: int
) -> Week:
    gc.collect()
    shard = hb.directory.shards[0]
    info = ray.get(hb.shard(shard).info.remote(), timeout=60)
    snapshot = client_.strlen(journal.snapshot_key(shard))
    length = client_.xlen(journal.journal_key(shard))
    archived = sum(client_.hlen(k) for k in client_.scan_iter(match=f"{archive.PREFIX}*"))
    slots = sum(len(hb.slots(p, s)["capacity"]) for p, s in _sample_calendars(hb))
    gateway, shard_mb, redis_mb = rss(psutil.Process().pid), rss(info["pid"]), rss(server.pid or 0)
    # A shard killed now: how long until it serves again (recovery from snapshot + journal).
    t0 = time.monotonic()
    ray.kill(hb.shard(shard), no_restart=False)
    deadline = t0 + 120
    while True:
        try:
            after = ray.get(hb.shard(shard).info.remote(), timeout=30)
            if after["pid"] != info["pid"] and after["recovery"] is not None:
                break
        except ray.exceptions.RayError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the shard did not recover within 2 minutes")
        time.sleep(0.05)
    recovery = time.monotonic() - t0
    found = 0
    acked = list(load.bookings)  # the clients go on booking meanwhile
    for bid in acked:
        pid, service = _calendar_of(bid)
        try:
            b = hb.booking(pid, service, bid)
            found += int(b.booking_id == bid)
        except Exception as exc:  # counted as lost, and said why
            print(f"  not found: {bid[:20]}… ({pid}/{service}): {type(exc).__name__}: {exc}")
    return Week(
        week,
        day,
        gateway,
        shard_mb,
        redis_mb,
        snapshot / 1024,
        length,
        slots,
        archived,
        recovery,
        len(acked),
        found,
    )


def _sample_calendars(hb: Hexbook) -> list[tuple[str, str]]:
    return [(f"chi-{i:04d}", "covid-vaccine") for i in range(0, SITES, 30)]


def _calendar_of(booking_id: str) -> tuple[str, str]:
    from actors.api import calendar_of

    return calendar_of(booking_id)


def run(days: int, seconds_per_day: float) -> int:
    from gateway.observe import configure_logging

    configure_logging("WARNING")  # JSON lines: a shard kill's 503s and warnings
    rate = DAY / seconds_per_day
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data) as server:
        ns = f"soak-{uuid.uuid4().hex[:6]}"
        from tests.raycluster import start_local_ray

        start_local_ray(ns)
        try:
            hb = Hexbook.connect(
                server.url,
                namespace=ns,
                shard_options={
                    "roll_seconds": 0.25,
                    "sweep_seconds": 0.25,
                    "snapshot_every_seconds": 5.0,
                },
                keyring=Keyring.generate(),  # sealed at rest, as `hexbook up` runs
            )
            today = datetime.now(ZoneInfo(TZ)).date()
            city = demo_city(SITES)
            hb.provision_many(city, today, HORIZON, 15, horizon_days=HORIZON)
            hb.set_clock(offset=0, rate=rate)
            feed = Feed(hb)
            feed_server = serve_feed(feed)
            settings = Settings(
                redis_url=server.url,
                namespace=ns,
                hold_ttl_seconds=3600,
                rate_per_key=1e6,
                rate_per_address=1e6,
                import_tick_seconds=0.5,
            )
            app = create_app(settings, hexbook=hb)
            keys = KeyStore(hb.redis)
            client_key = keys.create("booking-client", "soak")[0]
            operator = keys.create("operator", "soak")[0]
            client_ = redis.Redis.from_url(server.url)
            load = Load()
            weeks: list[Week] = []
            with in_thread(app) as url:
                feed_url = f"http://127.0.0.1:{feed_server.server_address[1]}/$bulk-publish"
                r = httpx.post(
                    f"{url}/v1/imports/schedules",
                    headers={"Authorization": f"Bearer {operator}"},
                    json={
                        "connector": "smart",
                        "url": feed_url,
                        "every_seconds": max(1, int(seconds_per_day)),
                    },
                )
                r.raise_for_status()
                weeks = asyncio.run(
                    _drive(url, client_key, hb, server, client_, load, days, seconds_per_day)
                )
            report = audit(client_, load.acks, hb.keyring)
            feed_server.shutdown()
        finally:
            ray.shutdown()
    return _print(weeks, report, load, days, seconds_per_day)


async def _drive(
    url: str,
    key: str,
    hb: Hexbook,
    server: EmbeddedRedis,
    client_: redis.Redis,
    load: Load,
    days: int,
    seconds_per_day: float,
) -> list[Week]:
    rng = random.Random(2021)
    start = hb.clock.seconds()
    weeks: list[Week] = []

    def sim_day() -> int:
        return (hb.clock.seconds() - start) // DAY

    launch = asyncio.Event()
    # Day 1: the launch (8 clients flat out); then 3 clients at a steady pace.
    while sim_day() < 1:
        await asyncio.sleep(0.05)
    launchers = [
        asyncio.create_task(client(url, key, load, launch, random.Random(i), None))
        for i in range(8)
    ]
    while sim_day() < 2:
        await asyncio.sleep(0.05)
    launch.set()
    await asyncio.gather(*launchers)
    steady = asyncio.Event()
    workers = [
        asyncio.create_task(client(url, key, load, steady, random.Random(100 + i), 0.3))
        for i in range(3)
    ]
    next_week = 7
    while sim_day() < days:
        if sim_day() >= next_week:
            week = await asyncio.to_thread(
                measure, hb, server, client_, load, next_week // 7, sim_day()
            )
            weeks.append(week)
            print(_row(week), flush=True)
            next_week += 7
        await asyncio.sleep(0.1 * rng.random())
    steady.set()
    await asyncio.gather(*workers)
    return weeks


HEAD = (
    "week  day  gateway MB  shard MB  redis MB  snapshot KB  journal  slots(sample)  "
    "archived  recovery s  acked   found"
)


def _row(w: Week) -> str:
    return (
        f"{w.week:>4} {w.day:>4} {w.gateway_mb:>11.1f} {w.shard_mb:>9.1f} {w.redis_mb:>9.1f} "
        f"{w.snapshot_kb:>12.1f} {w.journal:>8} {w.slots:>14} {w.archived:>9} "
        f"{w.recovery_s:>11.2f} {w.acked:>6} {w.found:>7}"
    )


def _print(weeks: list[Week], report: Any, load: Load, days: int, spd: float) -> int:
    print(
        f"\n== soak: {days} days on a clock {DAY / spd:,.0f}x the wall ({spd:g} s a day), "
        f"{SITES} template sites + {FEED_SITES} imported, horizon {HORIZON} days"
    )
    print(HEAD)
    for w in weeks:
        print(_row(w))
    print(f"answers: {dict(sorted(load.statuses.items()))}")
    print(report.summary())
    lost = [w for w in weeks if w.found < w.acked]
    settled = [w for w in weeks if w.day > HORIZON + 7]
    problems = []
    if lost:
        problems.append(f"bookings not found in week(s) {[w.week for w in lost]}")
    if not report.ok:
        problems.append("the audit found violations")
    if len(settled) >= 2:
        for name, tolerance, floor in (
            ("shard_mb", 1.25, 40),
            ("gateway_mb", 1.25, 40),
            ("snapshot_kb", 1.25, 0),
            ("recovery_s", 1.5, 1.0),
        ):
            first = getattr(settled[0], name)
            peak = max(getattr(w, name) for w in settled)
            if peak > first * tolerance + floor:
                problems.append(f"{name} grew from {first:.1f} to {peak:.1f} after the horizon")
        values = [w.recovery_s for w in settled]
        print(
            f"after the horizon: recovery {statistics.median(values):.2f} s median, "
            f"shard RSS {settled[0].shard_mb:.0f}-{max(w.shard_mb for w in settled):.0f} MB"
        )
    print("verdict: " + ("ok" if not problems else "; ".join(problems)))
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90, help="simulated days (default 90)")
    parser.add_argument(
        "--seconds-per-day",
        type=float,
        default=6.0,
        help="real seconds a simulated day lasts (default 6)",
    )
    args = parser.parse_args(argv)
    if args.days < 8 or args.seconds_per_day < 1:
        parser.error("--days at least 8 (a week is measured), --seconds-per-day at least 1")
    return run(args.days, args.seconds_per_day)


if __name__ == "__main__":
    raise SystemExit(main())
