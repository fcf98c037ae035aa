"""The gateway benchmark: wrk against a do-nothing FastAPI POST (the ceiling) and against
hexbook's gateway, served the same way, in one run.

Load generator: wrk (Debian package ``wrk``), one thread, Lua scripts written here; it
counts answers by status in ``response()`` for every scenario, the ceiling included, so
each pays the same client cost. Servers: uvicorn (uvloop, httptools) in this process,
one worker, as ``hexbook up`` serves; Ray (num_cpus=2) and the embedded redis-server
(``appendfsync always``) on the same 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["part_gateway"]

WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

COMMON = r"""
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
local function count(status, what)
  local k = what .. ":" .. status
  counts[k] = (counts[k] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format('"%s": %d', k, v)) end
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "errors": %d, ' ..
    '"counts": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, table.concat(parts, ", ")))
end
"""


def _lua_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bodies_lua(name: str, bodies: list[str]) -> str:
    return f"local {name} = {{" + ",\n".join(_lua_string(b) for b in bodies) + "}\n"


def script_post(path: str, key: str, bodies: list[str]) -> str:
    return (
        COMMON
        + _bodies_lua("bodies", bodies)
        + f"""
local i = 0
function init(args) counts = {{}}; math.randomseed(os.time()); i = math.random(#bodies) end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer {key}"}}, bodies[i])
end
function response(status, headers, body) count(status, "post") end
"""
    )


PATIENT = '{"reference": "b"}'
# What a front-end sends for a patient who wants reminders: sealed at rest with the rest.
PATIENT_CONTACT = (
    '{"reference": "b", "contact": {"email": "pat.bench@example.org", "phone": "+13125550100"}}'
)


def with_attestation(bodies: list[str]) -> list[str]:
    """The hold bodies with a date of birth and postal code attested."""
    att = {"birth_date": "1951-04-09", "postal_code": "60614"}
    return [
        json.dumps({**json.loads(b), "attestation": att}, separators=(",", ":")) for b in bodies
    ]


WHERE = b"hexbook:shard:s:journal"


def seal_cost() -> str:
    """What one seal costs (AES-256-GCM, one per group commit, whatever its size)."""
    import timeit

    from actors.sealing import Keyring

    ring = Keyring.generate()
    parts = []
    for size in (300, 3_000, 30_000):
        data = os.urandom(size)
        n = 2_000
        t = min(timeit.repeat(lambda d=data: ring.seal(d, WHERE), number=n, repeat=5)) / n
        parts.append(f"{size:,} B {t * 1e6:.1f} us")
    return "seal of one journal entry (AES-256-GCM): " + ", ".join(parts)


def script_flow(key: str, bodies: list[str], patient: str = PATIENT, once: bool = False) -> str:
    """Hold, then book with the hold id the answer gave (any connection may book it);
    ``patient``: the confirm's patient object (JSON). ``once``: a crowd served to the
    end: each body is held once (not round again), and the run stops when every hold and
    every booking of a held place has its answer, all but 1 in 1,000 (a connection with
    nothing left to send waits, ``delay()``; then wrk is interrupted), so its duration
    is the time the whole crowd took."""
    # wrk's run ends at -d or at SIGINT (its duration then ends there too). The shell
    # os.execute starts is wrk's child; system() ignores SIGINT in wrk until that shell
    # ends, so the kill comes from a job it leaves behind, 10 ms later.
    ending = """
local answered, held, over = 0, 0, false
-- A request wrk writes again on a connection the server closed (an idle parked one) may
-- skip a body: its answer never comes. Up to 1 in 1,000 missing ends the crowd all the
-- same (its last answers, a few ms of it, go uncounted).
local slack = math.max(2, math.floor(#bodies / 1000))
function delay()
  if #holds > 0 or i < #bodies then return 0 end
  return 3600000  -- nothing left to send: wait for the others' answers
end
"""
    stop = """
  answered = answered + 1
  if answered >= #bodies + held - slack and not over then
    over = true; os.execute("(sleep 0.01; kill -INT $PPID) &")
  end"""
    return (
        COMMON
        + _bodies_lua("bodies", bodies)
        + f"""
local i = 0
local holds = {{}}
local auth = "Bearer {key}"{ending if once else ""}
function init(args)
  counts = {{}}; math.randomseed(os.time()); i = {"0" if once else "math.random(#bodies)"}
end
function request()
  local h = table.remove(holds)
  if h then
    return wrk.format("POST", "/v1/bookings", {{["Content-Type"] = "application/json",
      ["Authorization"] = auth}}, '{{"hold_id": "' .. h .. '", "patient": {patient}}}')
  end
  {"i = math.min(i + 1, #bodies)" if once else "i = i % #bodies + 1"}
  return wrk.format("POST", "/v1/holds", {{["Content-Type"] = "application/json",
    ["Authorization"] = auth}}, bodies[i])
end
function response(status, headers, body)
  local h = string.match(body, '"hold_id":"([^"]+)"')
  if string.find(body, '"booking_id"', 1, true) then
    count(status, "booking")
  elseif h and status == 201 then
    count(status, "hold")
    table.insert(holds, h){"; held = held + 1" if once else ""}
  else
    count(status, "other")
  end{stop if once else ""}
end
"""
    )


def script_get(key: str | None, paths: list[str], pause_ms: float | None = None) -> str:
    """GET the paths in turn; with ``pause_ms``, each connection waits a random time
    (exponential, that mean) before each request: arrivals at a set rate, not as fast
    as answers come, so latency is measured under load rather than queueing."""
    auth = f', {{["Authorization"] = "Bearer {key}"}}' if key else ""
    pause = (
        f"function delay() return -math.log(1 - math.random()) * {pause_ms:.3f} end\n"
        if pause_ms
        else ""
    )
    return (
        COMMON
        + _bodies_lua("paths", paths)
        + f"""
local i = 0
function init(args) counts = {{}}; math.randomseed(os.time()); i = math.random(#paths) end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i]{auth})
end
function response(status, headers, body) count(status, "get") end
"""
        + pause
    )


def wrk(url: str, script: str, connections: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    proc = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            f.name,
            url,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"wrk failed ({f.name}): {proc.stderr or proc.stdout}")
    out = proc.stdout
    Path(f.name).unlink()
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(app: Any) -> Any:
    """uvicorn as ``hexbook up`` runs it, in a thread of this process."""
    from gateway.server import in_thread

    return in_thread(app)


def _noop_app() -> Any:
    from fastapi import FastAPI

    from gateway.app import TELEMETRY_OFF

    app = FastAPI(telemetry=TELEMETRY_OFF)  # as hexbook's app is configured

    @app.post("/noop", status_code=201)
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    return app


def _hold_bodies(
    city: list[Any], today: Any, rng: random.Random, n: int, days: tuple[int, int] = (1, 14)
) -> list[str]:
    """``n`` hold bodies for open places of the demo city, on ``days`` from today (first
    included, last not), in random order; a slot of capacity k appears at most k times,
    so none of them can be a 409."""
    tz = ZoneInfo("America/Chicago")
    seen: set[tuple[str, datetime]] = set()
    bodies: list[str] = []
    while len(bodies) < n:
        provider, template = rng.choice(city)
        d = today + timedelta(days=rng.randrange(*days))
        windows = dict(template.days).get(WEEK[d.weekday()])
        if not windows:
            continue
        w = windows[0]
        (h1, m1), (h2, m2) = (map(int, t.split(":")) for t in (w.opens, w.closes))
        slots = ((h2 * 60 + m2) - (h1 * 60 + m1)) // 15
        start = datetime(d.year, d.month, d.day, h1, m1, tzinfo=tz)
        start += timedelta(minutes=15 * rng.randrange(slots))
        if (provider.provider_id, start) in seen:
            continue
        seen.add((provider.provider_id, start))
        body = {"provider_id": provider.provider_id, "service": "covid-vaccine"}
        text = json.dumps({**body, "start": start.isoformat()}, separators=(",", ":"))
        bodies.extend([text] * min(w.capacity, n - len(bodies)))
    rng.shuffle(bodies)
    return bodies


def _line(name: str, r: dict[str, Any], extra: str = "") -> None:
    print(
        f"{name:34} {r['rps']:>8,.0f} req/s   p50 {r['p50_ms']:6.2f} ms   "
        f"p99 {r['p99_ms']:6.2f} ms   {extra}"
    )


CONNECTIONS = (32, 256)  # a steady front end, and a launch: many patients at once
SEARCH_LOAD = 0.6  # search latency is measured at this share of its flat-out rate


def script_series(key: str, bodies: list[str]) -> str:
    """Hold a series (dose 2 picked in the window), then book it (any connection may)."""
    return (
        COMMON
        + _bodies_lua("bodies", bodies)
        + f"""
local i = 0
local held = {{}}
local auth = "Bearer {key}"
function init(args) counts = {{}}; math.randomseed(os.time()); i = math.random(#bodies) end
function request()
  local s = table.remove(held)
  if s then
    return wrk.format("POST", "/v1/series/bookings", {{["Content-Type"] = "application/json",
      ["Authorization"] = auth}}, '{{"series_id": "' .. s .. '", "patient": {{"reference": "b"}}}}')
  end
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/series/holds", {{["Content-Type"] = "application/json",
    ["Authorization"] = auth}}, bodies[i])
end
function response(status, headers, body)
  local s = string.match(body, '"series_id":"([^"]+)"')
  if string.find(body, '"state":"confirmed"', 1, true) then
    count(status, "series")
  elseif s and status == 201 then
    count(status, "held")
    table.insert(held, s)
  else
    count(status, "other")
  end
end
"""
    )


def _series_template(url: str) -> None:
    """Dose 2 of the demo's service 3 to 7 days after dose 1 (kept in the calendars)."""
    import asyncio

    import redis.asyncio as aioredis

    from actors.policy import PolicyStore
    from engine.series import SeriesTemplate

    async def put() -> None:
        client = aioredis.from_url(url)
        try:
            await PolicyStore(client).set_template(SeriesTemplate("covid-vaccine", 3, 7))
        finally:
            await client.aclose()

    asyncio.run(put())


@dataclass
class DemoStack:
    server: Any  # the embedded redis-server
    hb: Any  # the Hexbook connection
    city: list[Any]  # (provider, template) of each demo site
    namespace: str
    key: str  # a booking-client key, never rate-limited


@contextlib.contextmanager
def demo_stack(today: date) -> Iterator[DemoStack]:
    """The demo city (1,500 sites, 14 days from ``today``) on the default shards, sealed
    at rest as `hexbook up` runs (ADR 0019), on an embedded redis-server (appendfsync
    always) and a local Ray of 2 CPUs."""
    import ray

    from actors.api import Hexbook
    from actors.embedded_redis import EmbeddedRedis
    from actors.sealing import Keyring
    from gateway.demo import demo_city
    from gateway.keys import KeyStore

    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data) as server:
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        from tests.raycluster import start_local_ray

        start_local_ray(ns)
        try:
            hb = Hexbook.connect(server.url, namespace=ns, keyring=Keyring.generate())
            city = demo_city(1500)
            t0 = time.perf_counter()
            hb.provision_many(city, today, 14, 15)
            print(f"demo city: {len(city)} sites provisioned in {time.perf_counter() - t0:.1f} s")
            key = KeyStore(hb.redis).create("booking-client", "bench", rate_per_second=1e7)[0]
            yield DemoStack(server, hb, city, ns, key)
        finally:
            ray.shutdown()


def part_gateway(rounds: int, seconds: float = 6.0) -> dict[str, float]:
    from actors.directory import default_shards
    from gateway.app import create_app
    from gateway.settings import Settings

    if shutil.which("wrk") is None:
        print("== gateway: skipped, wrk is not installed (Debian: apt-get install wrk)")
        return {}
    print(
        f"== gateway: wrk -t1, uvicorn in-process, {default_shards()} shard(s) (the default on"
        " this machine: a core each, less the gateway's), redis-server appendfsync always;\n"
        f"   each round runs the ceiling, holds and hold-then-book at {CONNECTIONS} connections"
        " back to back"
    )
    tz = ZoneInfo("America/Chicago")
    today = datetime.now(tz).date()
    with demo_stack(today) as demo:
        server, hb, city, ns, key = demo.server, demo.hb, demo.city, demo.namespace, demo.key
        rng = random.Random(7)
        # Every run of holds and of hold-then-book gets places nobody has taken yet
        # (a hold lasts 5 minutes): a 409 here would measure a full slot, not speed.
        per_run = int(seconds * 6_000)
        runs = rounds * len(CONNECTIONS) * 3
        pool = _hold_bodies(city, today, rng, per_run * runs)
        fresh = iter(pool[i : i + per_run] for i in range(0, len(pool), per_run))
        # Series start in the first week, so that dose 2 (3-7 days on) is in the
        # 14 days provisioned; each run gets its own first places.
        series_pool = _hold_bodies(city, today, rng, per_run * rounds * len(CONNECTIONS), (1, 7))
        series_fresh = iter(
            series_pool[i : i + per_run] for i in range(0, len(series_pool), per_run)
        )
        _series_template(server.url)
        south, north, west, east = 41.70, 41.98, -87.85, -87.55
        searches = [
            f"/v1/search?lat={rng.uniform(south, north):.4f}&lng={rng.uniform(west, east):.4f}"
            f"&service=covid-vaccine&radius_km=5&limit=10"
            for _ in range(2000)
        ]
        noop = script_post("/noop", key, pool[:per_run])
        results: dict[str, list[dict[str, Any]]] = {}
        settings = Settings(redis_url=server.url, namespace=ns)
        app = create_app(settings, hexbook=hb)
        # Both servers stay up, and each round measures the ceiling right before
        # hexbook, so a ratio compares runs seconds apart on this shared machine.
        with serve(_noop_app()) as noop_url, serve(app) as url:
            wrk(url, script_get(key, searches[:50]), 4, 2)  # warm up
            for _ in range(rounds):
                for c in CONNECTIONS:
                    results.setdefault(f"ceiling@{c}", []).append(wrk(noop_url, noop, c, seconds))
                    app.state.runtime.service.router.batch_sizes.clear()
                    r = wrk(url, script_post("/v1/holds", key, next(fresh)), c, seconds)
                    sizes = app.state.runtime.service.router.batch_sizes
                    r["batch"] = sum(k * v for k, v in sizes.items()) / max(sum(sizes.values()), 1)
                    results.setdefault(f"holds@{c}", []).append(r)
                    results.setdefault(f"flow@{c}", []).append(
                        wrk(url, script_flow(key, next(fresh)), c, seconds)
                    )
                    bodies = with_attestation(next(fresh))
                    results.setdefault(f"flow+contact@{c}", []).append(
                        wrk(url, script_flow(key, bodies, PATIENT_CONTACT), c, seconds)
                    )
                    results.setdefault(f"series@{c}", []).append(
                        wrk(url, script_series(key, next(series_fresh)), c, seconds)
                    )
                r = wrk(url, script_get(key, searches), 8, seconds)
                results.setdefault("search", []).append(r)
                # Then at 60% of the rate this round served flat out, from 32
                # connections that pause between requests.
                pause_ms = 32 / (SEARCH_LOAD * r["rps"]) * 1000
                results.setdefault("search paced", []).append(
                    wrk(url, script_get(key, searches, pause_ms), 32, seconds)
                )

    def best(name: str) -> dict[str, Any]:
        return max(results[name], key=lambda r: r["rps"])

    def booked(r: dict[str, Any]) -> float:
        return float(r["counts"].get("booking:201", 0) / r["seconds"] * 60)

    def whole(r: dict[str, Any]) -> float:
        return float(r["counts"].get("series:201", 0) / r["seconds"] * 60)

    ratios: dict[int, tuple[float, float]] = {}
    contacts: dict[int, float] = {}
    for c in CONNECTIONS:
        print(f"-- {c} connections (best of {rounds} rounds)")
        ceiling, holds, flow = best(f"ceiling@{c}"), best(f"holds@{c}"), best(f"flow@{c}")
        _line("do-nothing FastAPI POST (ceiling)", ceiling)
        placed = holds["counts"].get("post:201", 0) / holds["seconds"]
        _line(
            "POST /v1/holds",
            holds,
            f"({placed:,.0f} holds/s placed; {holds['batch']:.1f} per shard call)",
        )
        _line("hold then book", flow, f"({booked(flow):,.0f} bookings/min)")
        contact = best(f"flow+contact@{c}")
        _line(
            "  with a date of birth and contact details",
            contact,
            f"({booked(contact):,.0f} bookings/min, {booked(contact) / booked(flow):.2f}x)",
        )
        contacts[c] = booked(contact) / booked(flow)
        series = best(f"series@{c}")
        _line("series: hold both, book both", series, f"({whole(series):,.0f} series/min)")
        per_round = sorted(
            h["rps"] / f["rps"]
            for h, f in zip(results[f"holds@{c}"], results[f"ceiling@{c}"], strict=True)
        )
        ratios[c] = (holds["rps"] / ceiling["rps"], per_round[len(per_round) // 2])
    search = best("search")
    paced = sorted(results["search paced"], key=lambda r: r["p99_ms"])[rounds // 2]
    print(f"-- search (best of {rounds} rounds; paced: the median round by p99)")
    _line("GET /v1/search, 8 connections", search)
    _line(
        f"GET /v1/search at {SEARCH_LOAD:.0%} of that",
        paced,
        "(32 connections, Poisson arrivals)",
    )
    print("== gateway figures against the targets")
    for c in CONNECTIONS:
        b = booked(best(f"flow@{c}"))
        print(
            f"{c:>4} connections: holds / ceiling {ratios[c][0]:.2f} (median of rounds "
            f"{ratios[c][1]:.2f}; target >= 0.75)   confirmed bookings/min {b:,.0f} "
            f"({b / 75_000:.2f}x of 75,000)"
        )
    for c in CONNECTIONS:
        single, series = booked(best(f"flow@{c}")), whole(best(f"series@{c}"))
        print(
            f"{c:>4} connections: series booked/min {series:,.0f} (= {2 * series:,.0f} doses) "
            f"against single bookings/min {single:,.0f}: {series / single:.2f}x"
        )
    for c in CONNECTIONS:
        print(
            f"{c:>4} connections: bookings/min with a date of birth and contact details, "
            f"sealed at rest, against without: {contacts[c]:.2f}x"
        )
    print(seal_cost())
    launch = CONNECTIONS[-1]
    top = max(best(f"ceiling@{c}")["rps"] for c in CONNECTIONS)
    print(
        f"holds at {launch} connections / the ceiling's best at any concurrency: "
        f"{best(f'holds@{launch}')['rps'] / top:.2f}"
    )
    print(
        f"search p99 at {paced['rps']:,.0f} searches/s: {paced['p99_ms']:.2f} ms  "
        f"(target < 10 ms; flat out at 8 connections: {search['p99_ms']:.2f} ms)"
    )
    errs = {k: sum(r["errors"] for r in v) for k, v in results.items()}
    statuses = {k: best(k)["counts"] for k in results}
    print(f"socket errors: {errs}\nstatuses of the best rounds: {statuses}")
    return {
        "gateway_series_per_minute": whole(best(f"series@{launch}")),
        "gateway_requests_per_second": float(best(f"holds@{launch}")["rps"]),
        "gateway_search_per_second": float(search["rps"]),
    }
