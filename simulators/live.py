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

import asyncio
import csv
import html
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from simulators.report import STYLE, _per_minute, _save
from simulators.scenario import Scenario, ScenarioError, build_sites
from simulators.sim import Outcome, SimResult, simulate
from simulators.toolkit import progress, start_stack

__all__ = ["LiveResult", "LiveRun", "compare_live", "run_live"]


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


@dataclass
class _Made:
    """What a live run created on the gateway, to take it away again."""

    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # live id -> PUT body
    holds: set[str] = field(default_factory=set)  # held, not (yet) booked
    bookings: list[str] = field(default_factory=list)
    key_id: str | None = None


async def _take_away(client: httpx.AsyncClient, s: Scenario, operator: str, made: _Made) -> None:
    """Release the run's open holds, cancel its bookings, close its sites (no slots
    left: the gateway keeps no provider it cannot list, so the names stay, empty) and
    revoke its key. What cannot be taken away is said."""
    auth = {"Authorization": f"Bearer {operator}"}
    sem = asyncio.Semaphore(8)
    left: list[str] = []

    async def call(method: str, path: str, ok: tuple[int, ...], **kw: Any) -> None:
        async with sem:
            try:
                r = await client.request(method, path, headers=auth, **kw)
            except httpx.HTTPError as exc:
                left.append(f"{method} {path}: {type(exc).__name__}")
                return
        if r.status_code not in ok:
            left.append(f"{method} {path}: {r.status_code} {r.text[:120]}")

    await asyncio.gather(*(call("DELETE", f"/v1/holds/{h}", (204, 404, 410)) for h in made.holds))
    await asyncio.gather(
        *(call("DELETE", f"/v1/bookings/{b}", (204, 404, 409)) for b in made.bookings)
    )
    closed: dict[str, Any] = {"days": {}, "closed_dates": [], "blocked": []}
    await asyncio.gather(
        *(
            call("PUT", f"/v1/providers/{pid}", (200,), json={**body, "schedule": closed})
            for pid, body in made.sites.items()
        )
    )
    if made.key_id is not None:
        await call("DELETE", f"/v1/keys/{made.key_id}", (200, 404))
    print(
        f"took away what the run made: {len(made.bookings):,} bookings cancelled, "
        f"{len(made.sites)} sites closed, its key revoked"
        + (f"; {len(left)} calls failed, first: {left[0]}" if left else ""),
        flush=True,
    )


async def _provision(
    client: httpx.AsyncClient, s: Scenario, service: str, tag: str, operator: str, made: _Made
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
        made.sites[live_id] = body
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
    made.key_id = str(r.json()["key_id"])
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
    progress: Callable[[int], None],
    made: _Made,
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
                    made.holds.add(hold["hold_id"])
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
                            made.holds.discard(hold["hold_id"])
                            made.bookings.append(done.json()["booking_id"])
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
        progress(done)
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


@dataclass
class LiveRun:
    """What ``run_live`` did: the model, the live outcome, the rows comparing them, the
    report page, and whether a gateway's holds outlasted the compressed hold time."""

    model: SimResult
    live: LiveResult
    rows: list[tuple[str, float, float, float]]
    page: Path
    notes: list[str]


def run_live(
    s: Scenario,
    out: Path,
    url: str | None = None,
    key: str | None = None,
    speed: float = 30.0,
    concurrency: int = 200,
    quiet: bool = False,
    keep: bool = False,
) -> LiveRun:
    """Model ``s``, replay its residents on the gateway at ``url`` (with the operator
    ``key``), or on a stack of its own in ``out/stack`` when ``url`` is None, and write
    the report in ``out``. On a gateway of someone else's, what the run made (its sites,
    bookings, holds and key) is taken away again unless ``keep``."""
    from simulators.report import write_report

    if speed <= 0 or concurrency < 1:
        raise ScenarioError("--speed must be positive and --concurrency at least 1")
    if url is not None and not key:
        raise ScenarioError("--url needs an operator key: --key or $HEXBOOK_KEY")
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    # Slots are laid out from today, so the live calendars can take them.
    opened = datetime.now(zone(s.timezone)).replace(microsecond=0)
    s = msgspec.structs.replace(s, opens_at=opened.isoformat())
    ttl_model = s.holds.ttl_minutes * 60
    ttl_real = max(10, round(ttl_model / speed))
    if ttl_real * speed > ttl_model * 1.05:
        # The gateway grants at least 10 s: compress the model's hold time the same way.
        notes.append(
            f"holds of {ttl_model:g} s at --speed {speed:g} would be under 10 s; using "
            f"{ttl_real} s (= {ttl_real * speed / 60:g} model minutes) in both"
        )
        s = msgspec.structs.replace(
            s, holds=msgspec.structs.replace(s.holds, ttl_minutes=ttl_real * speed / 60)
        )
    with progress(1000, "model", not quiet) as done:
        model = simulate(s, lambda share: done(round(share * 1000)))
    write_report(model, out / "model")
    if model.arrivals > 20_000:
        raise ScenarioError(
            f"{model.arrivals:,} residents is too many to replay over HTTP; use a smaller scenario"
        )
    tag = "live-" + secrets.token_hex(3)
    service = f"{s.service}.{tag}"
    stack = None
    try:
        if url is None:
            print(f"starting a stack in {out / 'stack'} (holds of {ttl_real} s)", flush=True)
            stack = start_stack(out / "stack", env={"HEXBOOK_HOLD_TTL_SECONDS": str(ttl_real)})
            url, key = stack.url, stack.key("operator", "hexbook-sim live")
            keep = True  # the stack is this run's own: its folder keeps everything
        assert key is not None
        drive = _Drive(model, url, key, service, tag, speed, concurrency, quiet)
        live = asyncio.run(drive.run(keep))
    finally:
        if stack is not None:
            stack.stop()
    rows = compare_live(model, live)
    page = _write(model, live, out, rows)
    if (
        not math.isnan(live.hold_ttl_seconds)
        and live.hold_ttl_seconds * speed > s.holds.ttl_minutes * 60 * 1.5
    ):
        notes.append(
            f"the gateway granted holds of {live.hold_ttl_seconds:.0f} s, longer than the "
            "compressed hold time; start it with HEXBOOK_HOLD_TTL_SECONDS or use --stack"
        )
    return LiveRun(model, live, rows, page, notes)


class _Drive:
    """One replay on one gateway: provision, replay, then take away what it made."""

    def __init__(
        self,
        model: SimResult,
        url: str,
        operator: str,
        service: str,
        tag: str,
        speed: float,
        concurrency: int,
        quiet: bool,
    ) -> None:
        self.model, self.url, self.operator, self.service, self.tag = (
            model, url, operator, service, tag
        )  # fmt: skip
        self.speed, self.concurrency, self.quiet = speed, concurrency, quiet

    async def run(self, keep: bool) -> LiveResult:
        model = self.model
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        made = _Made()
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            try:
                print(
                    f"provisioning {len(model.providers)} sites on {self.url} as service "
                    f"{self.service}",
                    flush=True,
                )
                _, key = await _provision(
                    client, model.scenario, self.service, self.tag, self.operator, made
                )
                await _wait_for_index(client, model.scenario, self.service, key)
                minutes = model.scenario.hours * 60 / self.speed
                print(
                    f"replaying {model.arrivals:,} residents over about {minutes:.1f} minutes",
                    flush=True,
                )
                with progress(max(model.arrivals, 1), "live", not self.quiet) as done:
                    return await _residents(
                        client, model, self.service, key, self.speed, self.concurrency, done, made
                    )
            finally:
                if not keep:
                    await _take_away(client, model.scenario, self.operator, made)
