"""The launch benchmark: 50,000 arrivals in the first minute at the demo city's size,
without and with the waiting room, in one run.

The stack is the gateway bench's (uvicorn in this process, Ray with num_cpus=2, the
embedded redis-server with ``appendfsync always``) with the demo city's 1,500 sites and
a launch: a service of its own at 150 of them, one morning of 15-minute slots, 3
places each (5,400 places). The crowd is an open-loop client in a process of its own
(asyncio on raw HTTP/1.1 keep-alive connections: an HTTP library's per-request cost
would make the client the bottleneck on these 2 cores), arrivals evenly spread over
the minute, each from a random home in the city:

- without the room: search near home, hold the first free slot found; on a 409 the
  next one (three per search, three searches); a 503 or 429 is retried after its
  Retry-After;
- with the room: join it (the first seconds' arrivals wait in the pre-queue), ask
  where they stand when the answer says to, and once admitted do the same with the
  admission; those told their area is sold out stop there.

Each visitor gives up four minutes after arriving. Printed: joins per second, the time
from joining to seeing the admission (client-side, poll interval included), holds
placed, holds refused with 409, 503s, and the p50/p99 of every request the crowd made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.raycluster import start_local_ray

__all__ = ["part_launch"]

SOUTH, NORTH, WEST, EAST = 41.70, 41.98, -87.85, -87.55
SERVICE = "launch"
GIVE_UP_SECONDS = 240.0
ROOM_RATE = 6000  # admissions a minute: 5,400 places in about a minute
SESSION = 60  # seconds an admission lasts: a launch's visitor picks a slot within a minute


# --- the crowd (a process of its own) -------------------------------------------------


class Pool:
    """HTTP/1.1 keep-alive connections to one server, at most ``size`` at once."""

    def __init__(self, host: str, port: int, size: int, key: str) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)
        self.head = f"Host: {host}\r\nAuthorization: Bearer {key}\r\n"
        self.latencies: list[tuple[float, float, str]] = []  # (sent at, seconds, kind)
        self.statuses: dict[str, int] = {}

    async def call(
        self, kind: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any, float]:
        """(status, parsed JSON or None, Retry-After seconds)."""
        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self.head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
        request = (head + "\r\n").encode() + raw
        async with self.slots:
            conn = (
                self.idle.pop()
                if self.idle
                else await asyncio.open_connection(self.host, self.port)
            )
            sent = time.perf_counter()
            try:
                conn[1].write(request)
                header = await conn[0].readuntil(b"\r\n\r\n")
                lines = header.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                data = await conn[0].readexactly(int(fields.get("content-length", "0")))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                conn[1].close()
                self.statuses[f"{kind}:error"] = self.statuses.get(f"{kind}:error", 0) + 1
                return 0, None, 1.0
            self.idle.append(conn)
        took = time.perf_counter() - sent
        self.latencies.append((sent, took, kind))
        name = f"{kind}:{status}"
        self.statuses[name] = self.statuses.get(name, 0) + 1
        parsed = json.loads(data) if data else None
        return status, parsed, float(fields.get("retry-after", "1"))


class Crowd:
    def __init__(self, pool: Pool, room: str | None, seed: int) -> None:
        self.pool, self.room = pool, room
        self.rng = random.Random(seed)
        self.held = 0
        self.told_sold_out = 0
        self.gave_up = 0
        self.admitted_after: list[float] = []
        self.told_after: list[float] = []
        self.joins: list[float] = []

    async def _try(self, kind: str, method: str, path: str, body: Any, until: float) -> Any:
        """A request repeated after each 503/429 (as a person hits reload) until ``until``."""
        while time.perf_counter() < until:
            status, data, retry = await self.pool.call(kind, method, path, body)
            if status in (0, 429, 503):
                await asyncio.sleep(min(retry, 2.0))
                continue
            return status, data
        return 0, None

    async def book(self, lat: float, lng: float, admission: str | None, until: float) -> None:
        path = f"/v1/search?lat={lat:.4f}&lng={lng:.4f}&service={SERVICE}&radius_km=10&limit=5"
        for _ in range(3):
            status, found = await self._try("search", "GET", path, None, until)
            if status != 200:
                break
            slots = [(p["provider_id"], s["start"]) for p in found["results"]
                     for s in p["next_slots"][:1]][:3]  # fmt: skip
            if not slots:
                break  # nothing left near home
            for pid, start in slots:
                body: dict[str, Any] = {"provider_id": pid, "service": SERVICE, "start": start}
                if admission is not None:
                    body["admission"] = admission
                status, _ = await self._try("hold", "POST", "/v1/holds", body, until)
                if status == 201:
                    self.held += 1
                    return
                if status != 409:
                    self.gave_up += 1
                    return
        self.gave_up += 1

    async def visitor(self, i: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        start = time.perf_counter()
        until = start + GIVE_UP_SECONDS
        lat, lng = self.rng.uniform(SOUTH, NORTH), self.rng.uniform(WEST, EAST)
        if self.room is None:
            await self.book(lat, lng, None, until)
            return
        body = {"visitor_id": f"v{i}", "lat": lat, "lng": lng}
        status, view = await self._try("join", "POST", f"/v1/rooms/{self.room}/visitors", body,
                                       until)  # fmt: skip
        self.joins.append(time.perf_counter())
        path = f"/v1/rooms/{self.room}/visitors/v{i}"
        while status in (200, 201) and time.perf_counter() < until:
            if view["status"] == "admitted":
                self.admitted_after.append(time.perf_counter() - start)
                await self.book(lat, lng, view["admission"], until)
                return
            if view["status"] in ("sold_out", "expired"):
                self.told_sold_out += 1
                self.told_after.append(time.perf_counter() - start)
                return
            await asyncio.sleep(view["poll_after_seconds"] or 2)
            status, view = await self._try("view", "GET", path, None, until)
        self.gave_up += 1


async def _crowd(
    url: str, key: str, room: str | None, arrivals: int, seconds: float
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    pool = Pool(host, int(port), 512, key)
    crowd = Crowd(pool, room, 7)
    t0 = time.perf_counter() + 0.5
    await asyncio.gather(*(crowd.visitor(i, t0 + i * seconds / arrivals) for i in range(arrivals)))
    spike = [took for sent, took, _ in pool.latencies if sent - t0 <= seconds]
    spike.sort()
    joins = sorted(t - t0 for t in crowd.joins)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    admitted, told = sorted(crowd.admitted_after), sorted(crowd.told_after)
    return {
        "arrivals": arrivals,
        "requests": len(pool.latencies),
        "spike_p50_ms": pct(spike, 0.50) * 1000,
        "spike_p99_ms": pct(spike, 0.99) * 1000,
        "joins_per_second": len([t for t in joins if t <= seconds]) / seconds,
        "admitted": len(admitted),
        "admission_p50_s": pct(admitted, 0.5),
        "admission_p99_s": pct(admitted, 0.99),
        "told_sold_out": crowd.told_sold_out,
        "told_p50_s": pct(told, 0.5),
        "held": crowd.held,
        "gave_up": crowd.gave_up,
        "statuses": pool.statuses,
        "seconds": time.perf_counter() - t0,
    }


def client_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="the launch bench's crowd (run by part_launch)")
    p.add_argument("url")
    p.add_argument("key")
    p.add_argument("--room")
    p.add_argument("--arrivals", type=int, default=50_000)
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args(argv)
    import uvloop

    out = uvloop.run(_crowd(a.url, a.key, a.room, a.arrivals, a.seconds))
    print("LAUNCHJSON " + json.dumps(out))
    return 0


# --- the stack and the two runs ---------------------------------------------------------


def _launch_sites(city: list[Any], n: int = 150) -> list[Any]:
    from msgspec.structs import replace

    from engine.schedule import WEEKDAYS, WeeklyTemplate, Window

    rng = random.Random(3)
    window = (Window("09:00", "12:00", 3),)
    template = WeeklyTemplate(days=tuple((d, window) for d in WEEKDAYS))
    return [
        (replace(p, provider_id=f"launch-{i:03d}", services=(SERVICE,)), template)
        for i, (p, _) in enumerate(rng.sample(city, n))
    ]


def _sample_lag(index: Any, url: str, stop: threading.Event, lags: list[float]) -> None:
    """How far the search index lags behind the shards, once a second: the newest entry
    of the availability stream against the last one the index applied."""
    import redis

    from actors.availability import AVAILABILITY_STREAM

    client = redis.Redis.from_url(url)
    try:
        while not stop.wait(1.0):
            newest = client.xrevrange(AVAILABILITY_STREAM, count=1)
            if newest:
                written = int(newest[0][0].split(b"-")[0])
                lags.append(max(0.0, (written - index.last_entry_ms) / 1000))
    finally:
        client.close()


def _run_crowd(
    url: str, key: str, room: str | None, arrivals: int, seconds: float
) -> dict[str, Any]:
    args = [sys.executable, "-m", "tests.bench.launch", url, key, "--arrivals", str(arrivals),
            "--seconds", str(seconds)]  # fmt: skip
    if room:
        args += ["--room", room]
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=900)
    line = next((x for x in done.stdout.splitlines() if x.startswith("LAUNCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"the crowd failed: {done.stderr[-2000:]}")
    return dict(json.loads(line.removeprefix("LAUNCHJSON ")))


def part_launch(arrivals: int = 50_000, seconds: float = 60.0) -> dict[str, float]:
    import httpx
    import ray

    from actors.api import Hexbook
    from actors.embedded_redis import EmbeddedRedis
    from gateway.app import create_app
    from gateway.demo import demo_city
    from gateway.keys import KeyStore
    from gateway.server import in_thread
    from gateway.settings import Settings

    print(
        f"== launch: {arrivals:,} arrivals in {seconds:.0f} s for 5,400 places, without and "
        "with the waiting room (uvicorn in-process, crowd in its own process, Ray "
        "num_cpus=2, redis-server appendfsync always)"
    )
    tz = ZoneInfo("America/Chicago")
    tomorrow = datetime.now(tz).date() + timedelta(days=1)
    runs: dict[str, dict[str, Any]] = {}
    for mode in ("without", "with"):
        with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data) as server:
            ns = f"launch-{uuid.uuid4().hex[:6]}"
            start_local_ray(ns)
            try:
                hb = Hexbook.connect(server.url, namespace=ns)
                city = demo_city(1500)
                hb.provision_many(city, tomorrow, 14, 15)
                hb.provision_many(_launch_sites(city), tomorrow, 1, 15, horizon_days=0)
                store = KeyStore(hb.redis)
                key = store.create("booking-client", "crowd", rate_per_second=1e7)[0]
                ops = store.create("operator", "bench")[0]
                app = create_app(Settings(redis_url=server.url, namespace=ns), hexbook=hb)
                with in_thread(app, keep_alive_seconds=300) as url:
                    room = None
                    if mode == "with":
                        room = "launch-day"
                        opens = datetime.now(UTC) + timedelta(seconds=6)
                        body = {"room_id": room, "service": SERVICE, "lat": 41.84,
                                "lng": -87.70, "radius_km": 40, "near_km": 10,
                                "opens_at": opens.isoformat(timespec="seconds"),
                                "per_minute": ROOM_RATE, "session_seconds": SESSION,
                                "one_per": ["visitor"]}  # fmt: skip
                        r = httpx.post(f"{url}/v1/rooms", json=body,
                                       headers={"Authorization": f"Bearer {ops}"})  # fmt: skip
                        r.raise_for_status()
                    ages: list[float] = []
                    stop = threading.Event()

                    sampler = threading.Thread(
                        target=_sample_lag,
                        args=(app.state.runtime.index, server.url, stop, ages),
                        daemon=True,
                    )
                    sampler.start()
                    try:
                        runs[mode] = _run_crowd(url, key, room, arrivals, seconds)
                    finally:
                        stop.set()
                        sampler.join()
                    runs[mode]["index_age_max_s"] = max(ages, default=0.0)
                    if room:
                        runs[mode]["room"] = httpx.get(
                            f"{url}/v1/rooms/{room}", headers={"Authorization": f"Bearer {ops}"}
                        ).json()
            finally:
                ray.shutdown()
    a, b = runs["without"], runs["with"]

    def conflicts(r: dict[str, Any]) -> int:
        return int(r["statuses"].get("hold:409", 0))

    def shed(r: dict[str, Any]) -> int:
        return sum(v for k, v in r["statuses"].items() if k.endswith((":503", ":429")))

    print(f"{'':44} {'without':>12} {'with room':>12}")
    rows = [
        ("requests made by the crowd", a["requests"], b["requests"]),
        ("queue joins per second (first minute)", "-", f"{b['joins_per_second']:,.0f}"),
        ("admitted", "-", b["admitted"]),
        ("join to admission seen, p50 / p99 (s)", "-",
         f"{b['admission_p50_s']:.1f} / {b['admission_p99_s']:.1f}"),
        ("told sold out (p50 s after joining)", "-",
         f"{b['told_sold_out']:,} ({b['told_p50_s']:.1f})"),
        ("holds placed", a["held"], b["held"]),
        ("holds refused with 409", conflicts(a), conflicts(b)),
        ("503 / 429 answers", shed(a), shed(b)),
        ("gave up (4 minutes, or nothing found)", a["gave_up"], b["gave_up"]),
        ("search index behind the shards, most (s)", f"{a['index_age_max_s']:.1f}",
         f"{b['index_age_max_s']:.1f}"),
        ("p50 of every request in the spike (ms)", f"{a['spike_p50_ms']:.1f}",
         f"{b['spike_p50_ms']:.1f}"),
        ("p99 of every request in the spike (ms)", f"{a['spike_p99_ms']:.1f}",
         f"{b['spike_p99_ms']:.1f}"),
    ]  # fmt: skip
    for name, va, vb in rows:
        fa = f"{va:,}" if isinstance(va, int) else va
        fb = f"{vb:,}" if isinstance(vb, int) else vb
        print(f"{name:44} {fa:>12} {fb:>12}")
    ratio = conflicts(b) / max(conflicts(a), 1)
    print(f"409s with the room / without: {ratio:.3f} (target <= 0.1)")
    print(f"statuses without: {a['statuses']}\nstatuses with: {b['statuses']}")
    return {"launch_409_ratio": ratio}


if __name__ == "__main__":
    raise SystemExit(client_main(sys.argv[1:]))
