"""From a cancellation to the waitlisted patient's notice delivered: the benchmark.

The demo city (1,500 sites, 14 days) on the default shards, sealed at rest, the gateway
running its own deliverer to a webhook receiver in this process (signatures checked).
On top, ``MEASURED`` sites of one place each, booked, each with one patient waiting
near it. Each measurement cancels one booking and times until the receiver has the
``offer.made`` notice for that patient: the shard's step (release, offer as a hold,
notice in the outbox, one commit), the deliverer's read, the template, the signed call.
Measured idle, then under hold-then-book load (wrk, 32 connections) on the demo city,
after the stack has settled: the first roll has opened every calendar's 28-day horizon
and a 6 s hold-then-book run has let the start's retention purge and index loads pass.
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["part_notify"]

MEASURED = 150
SERVICE = "bench-wl"
BOOKINGS = frozenset({"/v1/bookings"})


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def part_notify(rounds: int) -> dict[str, float]:
    import httpx

    from gateway.app import create_app
    from gateway.keys import KeyStore
    from gateway.settings import Settings
    from tests.bench.gateway_load import _hold_bodies, demo_stack, script_flow, serve, wrk
    from tests.polling import until

    if shutil.which("wrk") is None:
        print("== notify: skipped, wrk is not installed (Debian: apt-get install wrk)")
        return {}
    print(
        "== notify: a cancellation to the waitlisted patient's offer notice delivered "
        "(gateway's deliverer -> signed webhook), demo city of 1,500 sites"
    )
    tz = ZoneInfo("America/Chicago")
    today = datetime.now(tz).date()
    secret = b"bench-webhook-secret"
    rng = random.Random(11)
    receiver = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("receiver.py")), secret.decode()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    hook_url = receiver.stdout.readline().split()[1]
    arrived: dict[str, float] = {}

    def listen() -> None:
        assert receiver.stdout is not None
        for line in receiver.stdout:
            _, kind, entry_id, at = line.split()
            if kind == "offer.made":
                arrived[entry_id] = float(at)

    threading.Thread(target=listen, daemon=True).start()
    try:
        with demo_stack(today) as demo:
            server, hb, city, ns, key = demo.server, demo.hb, demo.city, demo.namespace, demo.key
            for shard in hb.directory.shards:  # the first roll opens the 28-day horizon
                hb._call(shard, "roll")  # now, not in the middle of a measurement
            store = KeyStore(hb.redis)
            ops_key = store.create("operator", "bench", rate_per_second=1e7)[0]
            settings = Settings(
                redis_url=server.url,
                namespace=ns,
                webhook_url=hook_url,
                webhook_secret=secret.decode(),
            )
            app = create_app(settings, hexbook=hb)
            with serve(app) as url:
                auth = {"Authorization": f"Bearer {key}"}
                ops = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ops_key}"})
                api = httpx.Client(base_url=url, headers=auth, timeout=30)
                first_day = today + timedelta(days=3)
                cases = []
                for i in range(MEASURED * 2):
                    lat = 41.60 + (i // 40) * 0.02
                    lng = -87.95 + (i % 40) * 0.02
                    pid = f"wl-bench-{i}"
                    r = ops.put(
                        f"/v1/providers/{pid}",
                        json={
                            "name": pid, "lat": lat, "lng": lng, "timezone": "America/Chicago",
                            "services": [SERVICE],
                            "schedule": {"days": {d: [{"opens": "09:00", "closes": "09:15",
                                                       "capacity": 1}]
                                                  for d in ("mon", "tue", "wed", "thu", "fri",
                                                            "sat", "sun")}},
                            "first_day": f"{first_day}", "days": 1, "horizon_days": 0,
                        },
                    )  # fmt: skip
                    assert r.status_code in (200, 201), r.text
                    start = ops.get(f"/v1/providers/{pid}/slots", params={"service": SERVICE})
                    slot = start.json()["slots"][0]["start"]
                    hold = api.post(
                        "/v1/holds", json={"provider_id": pid, "service": SERVICE, "start": slot}
                    ).json()
                    booking = api.post(
                        "/v1/bookings",
                        json={"hold_id": hold["hold_id"], "patient": {"reference": f"b{i}"}},
                    ).json()
                    entry = api.post(
                        "/v1/waitlist",
                        json={
                            "service": SERVICE,
                            "area": {"lat": lat, "lng": lng, "radius_km": 0.5},
                            "earliest": f"{today}T00:00:00Z",
                            "latest": f"{today + timedelta(days=10)}T00:00:00Z",
                            "patient": {"reference": f"w{i}", "contact": {"phone": "+13125550100"}},
                        },
                    ).json()
                    cases.append((booking, entry))

                def measure(batch: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[float]:
                    out = []
                    for booking, entry in batch:
                        t0 = time.time()  # the receiver's clock: the same machine's
                        r = api.delete(
                            f"/v1/bookings/{booking['booking_id']}",
                            headers={"X-Booking-Token": booking["booking_token"]},
                        )
                        assert r.status_code == 204, r.text
                        want = entry["entry_id"]
                        until(lambda want=want: want in arrived, seconds=30, every=0.002)
                        out.append((arrived[want] - t0) * 1000)
                    return out

                pool = _hold_bodies(city, today, rng, 6_000 * 50)
                # Settle: the start's retention purge and index loads run during this.
                warm, pool = pool[: 6_000 * 8], pool[6_000 * 8 :]
                wrk(url, script_flow(key, warm), 32, 6)
                idle = measure(cases[:MEASURED])
                loaded: dict[str, Any] = {}

                def load() -> None:
                    loaded["wrk"] = wrk(url, script_flow(key, pool), 32, 25)

                t = threading.Thread(target=load)
                t.start()
                runtime = app.state.runtime
                before = runtime.metrics.answered(201, BOOKINGS)
                until(lambda: runtime.metrics.answered(201, BOOKINGS) > before + 500)  # load on
                busy = measure(cases[MEASURED:])
                t.join()
    finally:
        assert receiver.stdin is not None
        receiver.stdin.close()
        receiver.wait(timeout=30)
    flow = loaded["wrk"]
    booked = flow["counts"].get("booking:201", 0) / flow["seconds"] * 60
    for name, xs in (("idle", idle), ("under load", busy)):
        p50, p99 = statistics.median(xs), _pct(xs, 0.99)
        print(
            f"cancellation -> offer notice delivered, {name:10}: p50 {p50:6.1f} ms   "
            f"p99 {p99:6.1f} ms   max {max(xs):6.1f} ms   ({len(xs)} offers)"
        )
    print(
        f"the load meanwhile: hold then book at 32 connections, {booked:,.0f} bookings/min "
        f"(p99 {flow['p99_ms']:.1f} ms)"
    )
    return {
        "notify_offer_p50_ms_loaded": statistics.median(busy),
        "notify_offer_p99_ms_loaded": _pct(busy, 0.99),
    }
