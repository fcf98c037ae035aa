"""The pages' benchmark: what the find-and-book page weighs and how soon it shows, and
what open dashboards cost the booking path.

On the demo city (1,500 sites, 14 days, the default shards, sealed at rest):

- **Page weight and first render.** Chromium (Debian's) loads ``/?q=60614`` (a search
  with its results and hex map) in a fresh profile each time: the requests it makes,
  the bytes of every answer, and the first contentful paint (the browser's own figure).
  The gateway's time for the page alone is timed over HTTP too.
- **The dashboard's cost.** Hold-then-book (wrk, 32 connections) with no dashboard open,
  then with 20 open (20 signed-in ``curl`` processes following ``/dashboard/events``), alternating
  over the rounds; bookings/s of each and their ratio.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["part_pages"]

DASHBOARDS = 20
# The first contentful paint, from the browser's own paint timing (buffered: it may
# have happened before the observer was made).
FCP = """() => new Promise(done => {
  new PerformanceObserver(list => {
    const e = list.getEntriesByName('first-contentful-paint')[0];
    if (e) done(e.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => done(null), 5000);
})"""
CONNECTIONS = 32


def _weigh(url: str, loads: int) -> dict[str, float]:
    from tests.browser import page

    requests, sizes, paints = [], [], []
    for _ in range(loads):
        with page() as p:
            got: list[Any] = []

            def answered(response: Any, got: list[Any] = got) -> None:
                got.append(response)

            p.on("response", answered)
            p.goto(f"{url}/?q=60614", wait_until="load")
            paint = p.evaluate(FCP)
            requests.append(len(got))
            sizes.append(sum(len(r.body()) for r in got))
            if paint is not None:
                paints.append(float(paint))
    return {
        "requests": statistics.median(requests),
        "bytes": statistics.median(sizes),
        "fcp_median_ms": statistics.median(paints) if paints else float("nan"),
        "fcp_best_ms": min(paints) if paints else float("nan"),
    }


def _server_ms(url: str, n: int = 40) -> float:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/", params={"q": "60614"})
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.get("/", params={"q": "60614"})
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
    return statistics.median(times)


class Dashboards:
    """``n`` signed-in dashboards following the live events: ``curl -N`` processes (not
    threads of this process, which serves the gateway: they would take its GIL)."""

    def __init__(self, url: str, cookie: str, n: int) -> None:
        self.args = ["curl", "-sN", "-b", f"hb_session={cookie}", f"{url}/dashboard/events"]
        self.n = n
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Dashboards:
        for _ in range(self.n):
            proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:  # live: its first snapshot arrived
                if line.startswith("event: stats"):
                    break
            else:
                raise RuntimeError("a dashboard got no events")
            self.procs.append(proc)
        return self

    def __exit__(self, *_: object) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait()


def part_pages(rounds: int, seconds: float = 6.0) -> dict[str, float]:
    import random

    import httpx

    from gateway.app import create_app
    from gateway.keys import KeyStore
    from gateway.settings import Settings
    from tests.bench.gateway_load import _hold_bodies, demo_stack, script_flow, serve, wrk

    print("== pages: the find-and-book page and the dashboard, demo city of 1,500 sites")
    tz = ZoneInfo("America/Chicago")
    today = datetime.now(tz).date()
    figures: dict[str, float] = {}
    with demo_stack(today) as demo:
        settings = Settings(redis_url=demo.server.url, namespace=demo.namespace)
        app = create_app(settings, hexbook=demo.hb)
        with serve(app) as url:
            weight = _weigh(url, max(rounds, 3))
            server = _server_ms(url)
            print(
                f"find page (/?q=60614, 20 results and the hex map): {weight['requests']:.0f} "
                f"requests, {weight['bytes'] / 1024:.1f} KiB; first contentful paint median "
                f"{weight['fcp_median_ms']:.0f} ms, best {weight['fcp_best_ms']:.0f} ms; "
                f"the gateway's answer {server:.1f} ms (median)"
            )
            figures |= {
                "pages_find_bytes": weight["bytes"],
                "pages_find_requests": weight["requests"],
                "pages_find_fcp_ms": weight["fcp_median_ms"],
                "pages_find_server_ms": server,
            }
            if shutil.which("wrk") is None:
                print("   dashboard cost: skipped, wrk is not installed (apt-get install wrk)")
                return figures
            operator = KeyStore(demo.hb.redis).create("operator", "bench", rate_per_second=1e7)[0]
            with httpx.Client(base_url=url) as client:
                signed = client.post("/signin", data={"api_key": operator})
                cookie = signed.cookies["hb_session"]
            rng = random.Random(5)
            per_run = int(seconds * 3_000)
            pool = _hold_bodies(demo.city, today, rng, per_run * (2 * rounds + 1))
            runs = iter(pool[i : i + per_run] for i in range(0, len(pool), per_run))
            wrk(url, script_flow(demo.key, next(runs)), CONNECTIONS, 2)  # warm up
            got: dict[int, list[float]] = {0: [], DASHBOARDS: []}
            rps: dict[int, list[float]] = {0: [], DASHBOARDS: []}
            for _ in range(rounds):
                for n in (0, DASHBOARDS):
                    script = script_flow(demo.key, next(runs))
                    if n == 0:
                        r = wrk(url, script, CONNECTIONS, seconds)
                    else:
                        with Dashboards(url, cookie, n):
                            r = wrk(url, script, CONNECTIONS, seconds)
                    got[n].append(r["counts"].get("booking:201", 0) / r["seconds"])
                    rps[n].append(r["rps"])
            alone, watched = statistics.median(got[0]), statistics.median(got[DASHBOARDS])
            rps_alone, rps_watched = statistics.median(rps[0]), statistics.median(rps[DASHBOARDS])
            print(
                f"hold-then-book at {CONNECTIONS} connections (medians of {rounds} alternating "
                f"rounds):\n  no dashboard:  {rps_alone:,.0f} req/s (holds and bookings), "
                f"{alone:,.0f} bookings/s\n  {DASHBOARDS} dashboards: {rps_watched:,.0f} req/s, "
                f"{watched:,.0f} bookings/s\n  ratio {rps_watched / rps_alone:.2f} (req/s), "
                f"{watched / alone:.2f} (bookings/s)"
            )
            figures |= {
                "pages_bookings_per_s_no_dashboard": alone,
                "pages_bookings_per_s_20_dashboards": watched,
            }
    return figures
