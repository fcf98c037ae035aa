"""Live mode: the model's residents, replayed over HTTP against a running gateway, and
the model's prediction beside the measured outcome.

The scenario is re-anchored to now (slots start the days after today), the model runs
first, then the scenario's sites are provisioned on the gateway under a service name
of this run's own (``covid-vaccine.live-1a2b3c``), so earlier runs never compete for
the same slots. Each resident arrives at the model's arrival time divided by
``--speed``, searches within the distance it would travel, holds one of the first
site's next three free slots, confirms (or walks away) after the compressed delay,
and retries or gives up as in the model. The gateway decides everything: the 409s,
the expiries, the index's staleness are the real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import html
import math
import os
import random
import secrets
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import msgspec
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from engine.schedule import WeeklyTemplate, zone
from gateway.stack import free_port, stop_stack, wait_ready
from simulators.report import STYLE, _per_minute, _save
from simulators.scenario import Scenario, ScenarioError, build_sites
from simulators.sim import Outcome, SimResult, simulate

__all__ = ["LiveResult", "compare_live", "run_live"]


class LiveResult(msgspec.Struct):
    """What the gateway did with the residents (times in model seconds after opening)."""

    arrivals: int
    booked_at: list[float]  # per resident, NaN unless booked
    arrival: list[float]
    booked_sites: dict[str, int]  # provider id -> bookings
    holds: int
    refused: int  # 409 on hold
    lapsed: int  # 410 on confirm
    errors: list[str]
    hold_ttl_seconds: float  # as the gateway granted it (real seconds)
    seconds: float


def _schedule(template: WeeklyTemplate) -> dict[str, Any]:
    return {
        "days": {
            day: [{"opens": w.opens, "closes": w.closes, "capacity": w.capacity} for w in windows]
            for day, windows in template.days
        },
        "closed_dates": list(template.closed_dates),
        "blocked": [{"start": b.start, "end": b.end} for b in template.blocked],
    }


def _start_stack(folder: Path, ttl: int) -> tuple[subprocess.Popen[str], str, str]:
    """``hexbook up`` in ``folder`` with hold time ``ttl``; (process, url, operator key)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    port = free_port()
    env = {**os.environ, "HEXBOOK_HOLD_TTL_SECONDS": str(ttl)}
    with open(folder / "stack.log", "w") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "up", "--data-dir", str(data),
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, folder / "stack.log", seconds=180)
    except RuntimeError:
        stop_stack(proc)
        raise
    made = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "create", "--role", "operator",
         "--name", "hexbook-sim live", "--data-dir", str(data)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        stop_stack(proc)
        raise RuntimeError(f"could not make an operator key: {made.stderr.strip()}")
    return proc, url, made.stdout.split()[0]


async def _provision(
    client: httpx.AsyncClient, s: Scenario, service: str, tag: str, operator: str
) -> tuple[dict[str, str], str]:
    """Put the sites on the gateway; (model id -> live id, booking-client key)."""
    auth = {"Authorization": f"Bearer {operator}"}
    from simulators.scenario import build_city

    sites, _ = build_sites(s, build_city(s))
    ids: dict[str, str] = {}
    sem = asyncio.Semaphore(8)

    async def put(provider: Any, template: WeeklyTemplate) -> None:
        live_id = f"{tag}-{provider.provider_id}"[:128]
        body = {
            "name": provider.name,
            "lat": provider.lat,
            "lng": provider.lng,
            "timezone": provider.timezone,
            "services": [service],
            "schedule": _schedule(template),
            "first_day": s.first_day.isoformat(),
            "days": s.sites.days,
            "slot_minutes": s.sites.slot_minutes,
            "horizon_days": 0,  # the scenario's days exactly, as the model has them
        }
        async with sem:
            r = await client.put(f"/v1/providers/{live_id}", json=body, headers=auth)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"PUT /v1/providers/{live_id}: {r.status_code} {r.text[:300]}")
        ids[provider.provider_id] = live_id

    await asyncio.gather(*(put(p, t) for p, t in sites))
    r = await client.post(
        "/v1/keys",
        json={"role": "booking-client", "name": f"hexbook-sim {tag}", "rate_per_second": 1e6},
        headers=auth,
    )
    if r.status_code != 201:
        raise RuntimeError(f"POST /v1/keys: {r.status_code} {r.text[:300]}")
    return ids, str(r.json()["key"])


async def _wait_for_index(client: httpx.AsyncClient, s: Scenario, service: str, key: str) -> None:
    """Until search sees the sites (the index follows the availability stream)."""
    lat, lng = s.city.center
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = await client.get(
            "/v1/search",
            params={"lat": lat, "lng": lng, "radius_km": 100, "service": service, "limit": 1},
            headers={"Authorization": f"Bearer {key}"},
        )
        if r.status_code == 200 and r.json()["results"]:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the gateway's search never showed the provisioned sites")


async def _residents(
    client: httpx.AsyncClient,
    model: SimResult,
    service: str,
    key: str,
    speed: float,
    concurrency: int,
    progress: Any,
) -> LiveResult:
    s = model.scenario
    h = s.holds
    rng = random.Random(s.seed)
    auth = {"Authorization": f"Bearer {key}"}
    sem = asyncio.Semaphore(concurrency)
    cells = model.cell_names
    import h3

    n = model.arrivals
    booked_at = [math.nan] * n
    booked_sites: dict[str, int] = {}
    counts = {"holds": 0, "refused": 0, "lapsed": 0}
    errors: list[str] = []
    granted: list[float] = []
    t0 = time.monotonic()

    def model_now() -> float:
        return (time.monotonic() - t0) * speed

    async def sleep_model(seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds / speed))

    async def request(method: str, url: str, **kw: Any) -> httpx.Response | None:
        async with sem:
            try:
                return await client.request(method, url, headers=auth, **kw)
            except httpx.HTTPError as exc:
                errors.append(f"{method} {url}: {type(exc).__name__}")
                return None

    async def one(r: int) -> None:
        await asyncio.sleep(max(0.0, model.arrival[r] / speed - (time.monotonic() - t0)))
        lat, lng = h3.cell_to_latlng(cells[model.home[r]])
        radius = min(float(model.travel_km[r]), 100.0)
        order = "distance" if s.demand.choice == "nearest" else "earliest"
        for _ in range(s.demand.max_tries):
            res = await request(
                "GET", "/v1/search",
                params={"lat": lat, "lng": lng, "radius_km": radius, "service": service,
                        "limit": 1, "order": order},
            )  # fmt: skip
            results = res.json()["results"] if res is not None and res.status_code == 200 else []
            if res is not None and res.status_code != 200:
                errors.append(f"search {res.status_code}: {res.text[:200]}")
            if results and results[0]["next_slots"]:
                site = results[0]
                slot = rng.choice(site["next_slots"][:3])
                await sleep_model(rng.uniform(*h.decide_seconds))
                held = await request(
                    "POST", "/v1/holds",
                    json={"provider_id": site["provider_id"], "service": service,
                          "start": slot["start"]},
                )  # fmt: skip
                counts["holds"] += 1
                if held is not None and held.status_code == 201:
                    hold = held.json()
                    granted.append(
                        datetime.fromisoformat(hold["expires_at"]).timestamp() - time.time()
                    )
                    confirm = rng.random() < h.confirm_share
                    await sleep_model(rng.uniform(*h.confirm_seconds))
                    if confirm:
                        done = await request(
                            "POST", "/v1/bookings",
                            json={"hold_id": hold["hold_id"], "patient": {"reference": f"r{r}"}},
                        )  # fmt: skip
                        if done is not None and done.status_code == 201:
                            booked_at[r] = model_now()
                            pid = site["provider_id"]
                            booked_sites[pid] = booked_sites.get(pid, 0) + 1
                            return
                        if done is not None and done.status_code == 410:
                            counts["lapsed"] += 1
                        elif done is not None:
                            errors.append(f"booking {done.status_code}: {done.text[:200]}")
                elif held is not None and held.status_code == 409:
                    counts["refused"] += 1
                elif held is not None:
                    errors.append(f"hold {held.status_code}: {held.text[:200]}")
            await sleep_model(rng.expovariate(1 / (s.demand.retry_minutes * 60)))
            if model_now() >= s.hours * 3600:
                return

    tasks = [asyncio.create_task(one(r)) for r in range(n)]
    for done, fut in enumerate(asyncio.as_completed(tasks), 1):
        await fut
        progress(done / max(n, 1))
    return LiveResult(
        arrivals=n,
        booked_at=booked_at,
        arrival=[float(x) for x in model.arrival],
        booked_sites=booked_sites,
        holds=counts["holds"],
        refused=counts["refused"],
        lapsed=counts["lapsed"],
        errors=errors,
        hold_ttl_seconds=float(np.median(granted)) if granted else math.nan,
        seconds=time.monotonic() - t0,
    )


def compare_live(model: SimResult, live: LiveResult) -> list[tuple[str, float, float, float]]:
    """(figure, model, live, relative difference) for bookings, fill rate and time to book."""
    places = max(int(model.places.sum()), 1)
    live_booked = int(np.count_nonzero(~np.isnan(np.asarray(live.booked_at))))
    model_booked = model.count(Outcome.BOOKED)
    m_wait = (model.booked_at - model.arrival)[model.outcome == Outcome.BOOKED] / 60
    lb = np.asarray(live.booked_at)
    l_wait = (lb - np.asarray(live.arrival))[~np.isnan(lb)] / 60
    rows = [
        ("bookings", float(model_booked), float(live_booked)),
        ("fill rate", model_booked / places, live_booked / places),
        (
            "median minutes to book",
            float(np.median(m_wait)) if m_wait.size else math.nan,
            float(np.median(l_wait)) if l_wait.size else math.nan,
        ),
        (
            "peak bookings per minute",
            float(_per_minute(model.confirm_times, model.scenario.hours).max(initial=0)),
            float(_per_minute(lb[~np.isnan(lb)], model.scenario.hours).max(initial=0)),
        ),
    ]
    return [(k, m, v, (v - m) / m if m else math.nan) for k, m, v in rows]


def _write(
    model: SimResult, live: LiveResult, out: Path, rows: list[tuple[str, float, float, float]]
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "model_vs_live.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["figure", "model", "live", "difference"])
        for k, m, v, d in rows:
            w.writerow([k, round(m, 4), round(v, 4), round(d, 4)])
    hours = model.scenario.hours
    lb = np.asarray(live.booked_at)
    fig, ax = plt.subplots(figsize=(9, 4))
    for times, label in ((model.confirm_times, "model"), (lb[~np.isnan(lb)], "live")):
        pm = _per_minute(times, hours)
        ax.plot(np.arange(pm.size), pm, label=label)
    ax.set_xlabel("model minutes after the opening")
    ax.set_ylabel("bookings per minute")
    ax.set_title("Bookings per minute: model and live")
    ax.legend()
    _save(fig, out / "bookings_per_minute.png")
    fig, ax = plt.subplots(figsize=(9, 4))
    m_wait = np.sort((model.booked_at - model.arrival)[model.outcome == Outcome.BOOKED] / 60)
    l_wait = np.sort((lb - np.asarray(live.arrival))[~np.isnan(lb)] / 60)
    for wait, label in ((m_wait, "model"), (l_wait, "live")):
        if wait.size:
            ax.plot(wait, np.arange(1, wait.size + 1) / max(model.arrivals, 1), label=label)
    ax.set_xlabel("model minutes from arrival to booking")
    ax.set_ylabel("share of arrivals booked within")
    ax.set_title("Time to book: model and live")
    ax.legend()
    _save(fig, out / "time_to_book.png")
    fill_model = {p.provider_id: int(b) for p, b in zip(model.providers, model.booked, strict=True)}
    with open(out / "sites.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["provider_id", "places", "booked_model", "booked_live"])
        for i, p in enumerate(model.providers):
            live_n = sum(v for k, v in live.booked_sites.items() if k.endswith(f"-{p.provider_id}"))
            w.writerow([p.provider_id, int(model.places[i]), fill_model[p.provider_id], live_n])
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{m:,.3g}</td><td>{v:,.3g}</td><td>{d:+.1%}</td></tr>"
        for k, m, v, d in rows
    )
    errs = "".join(f"<li>{html.escape(e)}</li>" for e in live.errors[:20])
    page = out / "index.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Model and live: {html.escape(model.scenario.name)}</title>
{STYLE}
</head><body><h1>Model and live: {html.escape(model.scenario.name)}</h1>
<p>{live.arrivals:,} residents replayed over HTTP in {live.seconds:.0f} s; holds lasted
{live.hold_ttl_seconds:.0f} real seconds ({model.scenario.holds.ttl_minutes:g} model minutes);
{live.holds:,} holds, {live.refused:,} refused (409),
{live.lapsed:,} expired before the confirm (410);
{len(live.errors)} errors.</p>
<table><tr><th></th><th>model</th><th>live</th><th>difference</th></tr>{table}</table>
<img src="bookings_per_minute.png" alt="bookings per minute">
<img src="time_to_book.png" alt="time to book">
{"<h2>Errors</h2><ul>" + errs + "</ul>" if errs else ""}
<p>Data: <a href="model_vs_live.csv">model_vs_live.csv</a>, <a href="sites.csv">sites.csv</a>;
the model's full report: <a href="model/index.html">model/</a>.</p>
</body></html>
""")
    return page


def run_live(s: Scenario, args: argparse.Namespace) -> int:
    from simulators.cli import _progress
    from simulators.report import write_report

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # Slots are laid out from today, so the live calendars can take them.
    opened = datetime.now(zone(s.timezone)).replace(microsecond=0)
    s = msgspec.structs.replace(s, opens_at=opened.isoformat())
    ttl_model = s.holds.ttl_minutes * 60
    ttl_real = max(10, round(ttl_model / args.speed))
    if ttl_real * args.speed > ttl_model * 1.05:
        # The gateway grants at least 10 s: compress the model's hold time the same way.
        print(
            f"hexbook-sim: holds of {ttl_model:g} s at --speed {args.speed:g} would be under 10 s; "
            f"using {ttl_real} s (= {ttl_real * args.speed / 60:g} model minutes) in both",
            file=sys.stderr,
        )
        s = msgspec.structs.replace(
            s, holds=msgspec.structs.replace(s.holds, ttl_minutes=ttl_real * args.speed / 60)
        )
    update, close = _progress(not args.quiet, "model")
    try:
        model = simulate(s, update)
    finally:
        close()
    write_report(model, out / "model")
    if model.arrivals > 20_000:
        raise ScenarioError(
            f"{model.arrivals:,} residents is too many to replay over HTTP; use a smaller scenario"
        )
    tag = "live-" + secrets.token_hex(3)
    service = f"{s.service}.{tag}"
    stack = None
    try:
        if args.stack:
            print(f"starting a stack in {out / 'stack'} (holds of {ttl_real} s)", flush=True)
            stack, url, operator = _start_stack(out / "stack", ttl_real)
        else:
            url, operator = args.url, args.key or os.environ.get("HEXBOOK_KEY", "")
            if not operator:
                raise ScenarioError("--url needs an operator key: --key or $HEXBOOK_KEY")
        live = asyncio.run(_drive(model, url, operator, service, tag, args))
    finally:
        if stack is not None:
            stop_stack(stack)
    rows = compare_live(model, live)
    page = _write(model, live, out, rows)
    print(f"{'':26}{'model':>12}{'live':>12}{'diff':>9}")
    for k, m, v, d in rows:
        print(f"{k:26}{m:12,.3g}{v:12,.3g}{d:+9.1%}")
    if live.errors:
        print(f"{len(live.errors)} errors, first: {live.errors[0]}")
    if (
        not math.isnan(live.hold_ttl_seconds)
        and live.hold_ttl_seconds * args.speed > s.holds.ttl_minutes * 60 * 1.5
    ):
        print(
            f"note: the gateway granted holds of {live.hold_ttl_seconds:.0f} s, longer than the "
            "compressed hold time; start it with HEXBOOK_HOLD_TTL_SECONDS or use --stack"
        )
    print(f"report: {page}")
    return 0


async def _drive(
    model: SimResult, url: str, operator: str, service: str, tag: str, args: argparse.Namespace
) -> LiveResult:
    from simulators.cli import _progress

    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        print(
            f"provisioning {len(model.providers)} sites on {url} as service {service}", flush=True
        )
        _, key = await _provision(client, model.scenario, service, tag, operator)
        await _wait_for_index(client, model.scenario, service, key)
        minutes = model.scenario.hours * 60 / args.speed
        print(
            f"replaying {model.arrivals:,} residents over about {minutes:.1f} minutes", flush=True
        )
        update, close = _progress(not args.quiet, "live")
        try:
            return await _residents(
                client,
                model,
                service,
                key,
                args.speed,
                args.concurrency,
                update or (lambda _: None),
            )
        finally:
            close()
