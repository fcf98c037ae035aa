"""The planner's report: figures, CSV files, PNG plots and one HTML page that explains
them, from a :class:`~simulators.sim.SimResult`.

The load the system would see is counted from the simulated requests: every try makes
``searches_per_try`` searches (served by the gateway's index), every hold and every
confirm is one call on the shard that owns the site. Sites are given to shards as the
directory does (a stable hash of their H3 cell), so the shard count accounts for hot
neighbourhoods, not just the total.
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from actors.directory import home_shard
from simulators.maps import Landmark, Projection, draw_hex_map, landmarks_near, write_html_map
from simulators.scenario import build_areas
from simulators.sim import Outcome, SimResult

__all__ = ["STYLE", "Plan", "map_setup", "plan_capacity", "summary", "write_report"]

STYLE = """<style>
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; }
th, td { padding: 2px 12px; border-bottom: 1px solid #ddd; text-align: left; }
td { text-align: right; } img { max-width: 100%; }
.plan { background: #f3f7ff; padding: 0.6em 1em; }
</style>"""

BIN = 10.0  # seconds: peaks are measured over 10-second windows
MAX_SHARDS = 256


@dataclass
class Plan:
    """What the system needs for this launch."""

    peak_search_rps: float
    peak_holds_rps: float
    peak_bookings_rps: float
    peak_gateway_rps: float
    shards: int  # 0 when no shard count up to MAX_SHARDS is enough (a cell is too hot)
    gateways: int
    redis_servers: int  # for the journals, shards spread over them (ADR 0025)
    nodes: int
    hottest_shard_rps: float  # at ``shards`` shards
    hottest_cell_rps: float
    by_shards: list[tuple[int, float]]  # (shard count, hottest shard's peak ops/s)


def _rate(times: np.ndarray, span: float, weight: float = 1.0) -> np.ndarray:
    bins = max(1, math.ceil(span / BIN))
    counts = np.bincount(np.minimum((times // BIN).astype(np.int64), bins - 1), minlength=bins)
    out: np.ndarray = counts * weight / BIN
    return out


def plan_capacity(r: SimResult, resolution: int = 8) -> Plan:
    """Peak request rates and the shard, gateway and node counts that carry them with
    the scenario's utilization (the share of capacity planned for)."""
    s = r.scenario
    k = s.capacity
    span = s.hours * 3600
    search = _rate(r.searches, span, k.searches_per_try)
    holds = _rate(r.hold_times, span)
    books = _rate(r.confirm_times, span)
    gateway = search + holds + books
    bins = search.size
    # Shard ops per 10 s bin per cell, then summed per shard for each shard count.
    cells = [p.cell(resolution) for p in r.providers]
    names = sorted(set(cells))
    index = {c: i for i, c in enumerate(names)}
    cell_of_site = np.array([index[c] for c in cells], dtype=np.int64)
    t = np.concatenate([r.hold_times, r.confirm_times])
    site = np.concatenate([r.hold_sites, r.confirm_sites]).astype(np.int64)
    per_cell = np.zeros((len(names), bins))
    if t.size:
        np.add.at(
            per_cell, (cell_of_site[site], np.minimum((t // BIN).astype(np.int64), bins - 1)), 1
        )
    per_cell /= BIN
    hottest_cell = float(per_cell.max()) if per_cell.size else 0.0
    limit = k.shard_ops_per_second * k.utilization
    by_shards: list[tuple[int, float]] = []
    chosen, chosen_peak = 0, 0.0
    n = 1
    # Every count up to 16 (to draw how load spreads), then doubling until one fits.
    while n <= MAX_SHARDS and (n <= 16 or chosen == 0):
        owner = np.array([home_shard(c, n) for c in names], dtype=np.int64)
        per_shard = np.zeros((n, bins))
        np.add.at(per_shard, owner, per_cell)
        peak = float(per_shard.max()) if per_shard.size else 0.0
        by_shards.append((n, peak))
        if peak <= limit and chosen == 0:
            chosen, chosen_peak = n, peak
        n = n + 1 if n < 16 else n * 2
    gateways = max(
        1,
        math.ceil(float(gateway.max(initial=0)) / (k.gateway_requests_per_second * k.utilization)),
    )
    # Every hold and booking is a journal event in some shard's Redis.
    journal = float((holds + books).max(initial=0))
    redis_servers = max(1, math.ceil(journal / (k.redis_events_per_second * k.utilization)))
    if chosen:
        chosen = max(chosen, redis_servers)  # a shard journals to one server
    nodes = math.ceil((max(chosen, 1) + gateways + redis_servers) / k.cores_per_node)
    return Plan(
        peak_search_rps=float(search.max(initial=0)),
        peak_holds_rps=float(holds.max(initial=0)),
        peak_bookings_rps=float(books.max(initial=0)),
        peak_gateway_rps=float(gateway.max(initial=0)),
        shards=chosen,
        gateways=gateways,
        redis_servers=redis_servers,
        nodes=nodes,
        hottest_shard_rps=chosen_peak,
        hottest_cell_rps=hottest_cell,
        by_shards=by_shards,
    )


def _minutes_to(r: SimResult, share: float) -> float | None:
    """Minutes after the opening until ``share`` of all places were booked."""
    total = int(r.places.sum())
    if total == 0 or r.confirm_times.size < share * total:
        return None
    times = np.sort(r.confirm_times)
    return float(times[math.ceil(share * total) - 1] / 60)


def summary(r: SimResult) -> dict[str, Any]:
    """The key figures, by name (what the HTML table and ``summary.csv`` show)."""
    booked = r.count(Outcome.BOOKED)
    wait = (r.booked_at - r.arrival)[r.outcome == Outcome.BOOKED] / 60
    dist = r.distance_km[r.outcome == Outcome.BOOKED]
    places = int(r.places.sum())
    return {
        "scenario": r.scenario.name,
        "eligible residents": r.arrivals + r.not_arrived,
        "arrivals": r.arrivals,
        "booked": booked,
        "gave up": r.count(Outcome.GAVE_UP),
        "still trying at the end": r.count(Outcome.WAITING),
        "arrived after the modelled span": r.not_arrived,
        "share of arrivals booked": booked / r.arrivals if r.arrivals else 0.0,
        "sites": len(r.providers),
        "places offered": places,
        "places booked": int(r.booked.sum()),
        "fill rate": int(r.booked.sum()) / places if places else 0.0,
        "minutes until half the places were booked": _minutes_to(r, 0.5),
        "minutes until 90% of the places were booked": _minutes_to(r, 0.9),
        "peak bookings per minute": int(
            _per_minute(r.confirm_times, r.scenario.hours).max(initial=0)
        ),
        "median minutes from arrival to booking": float(np.median(wait)) if wait.size else None,
        "90th percentile minutes to booking": float(np.percentile(wait, 90)) if wait.size else None,
        "median km travelled": float(np.median(dist)) if dist.size else None,
        "holds": int(r.hold_times.size),
        "holds refused (slot taken meanwhile)": int(r.conflicts.size),
        "holds that lapsed": int(r.expired_times.size),
        "confirms after the hold expired": r.late_confirms,
        "searches": int(r.searches.size),
        "model run seconds": round(r.seconds, 2),
    }


def _per_minute(times: np.ndarray, hours: float) -> np.ndarray:
    minutes = max(1, math.ceil(hours * 60))
    return np.bincount(np.minimum((times // 60).astype(np.int64), minutes - 1), minlength=minutes)


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        if "share" in key or "rate" in key:
            return f"{v:.1%}"
        return f"{v:,.3f}" if "per booking" in key else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def map_setup(r: SimResult) -> tuple[Projection, list[tuple[float, float]], list[Landmark]]:
    """The projection, site positions and landmarks every map of ``r`` shares."""
    proj = Projection.around(r.cell_names)
    sites = [(p.lat, p.lng) for p in r.providers]
    areas = [Landmark(f"{a.area} {a.name}".strip(), a.lat, a.lng) for a in build_areas(r.scenario)]
    return proj, sites, landmarks_near(r.cell_names, areas)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell_table(r: SimResult) -> dict[str, np.ndarray]:
    n = len(r.cell_names)
    arrivals = np.bincount(r.home, minlength=n)
    booked = np.bincount(r.home[r.outcome == Outcome.BOOKED], minlength=n)
    gave_up = np.bincount(r.home[r.outcome == Outcome.GAVE_UP], minlength=n)
    waiting = np.bincount(r.home[r.outcome == Outcome.WAITING], minlength=n)
    ok = r.outcome == Outcome.BOOKED
    km_sum = np.bincount(r.home[ok], weights=r.distance_km[ok], minlength=n)
    mean_km = np.divide(km_sum, booked, out=np.full(n, np.nan), where=booked > 0)
    return {
        "arrivals": arrivals,
        "booked": booked,
        "gave_up": gave_up,
        "waiting": waiting,
        "unserved": gave_up + waiting,
        "mean_km": mean_km,
    }


def write_report(r: SimResult, out: Path, plan: Plan | None = None) -> Path:
    """Write ``index.html``, the PNG plots and the CSV files into ``out``; return the page."""
    out.mkdir(parents=True, exist_ok=True)
    plan = plan or plan_capacity(r)
    s = r.scenario
    figures = summary(r)
    hours = s.hours

    # --- CSV ------------------------------------------------------------------------
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        for key, value in figures.items():
            w.writerow([key, "" if value is None else value])
        for key, value in vars(plan).items():
            if key != "by_shards":
                w.writerow([f"plan {key}", value])
    per_min = {
        "arrivals": _per_minute(r.arrival, hours),
        "searches": _per_minute(r.searches, hours),
        "holds": _per_minute(r.hold_times, hours),
        "holds_refused": _per_minute(r.conflicts, hours),
        "bookings": _per_minute(r.confirm_times, hours),
        "holds_lapsed": _per_minute(r.expired_times, hours),
    }
    with open(out / "minutes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["minute", *per_min])
        for m in range(per_min["bookings"].size):
            w.writerow([m, *(int(v[m]) for v in per_min.values())])
    cells = _cell_table(r)
    with open(out / "cells.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "lat", "lng", "population", *cells])
        for i, c in enumerate(r.cell_names):
            lat, lng = h3.cell_to_latlng(c)
            row = [c, round(lat, 5), round(lng, 5), r.cells[c]]
            row += [
                ("" if math.isnan(v[i]) else round(float(v[i]), 2))
                if v.dtype.kind == "f"
                else int(v[i])
                for v in cells.values()
            ]
            w.writerow(row)
    fill = np.divide(r.booked, r.places, out=np.zeros(r.places.size), where=r.places > 0)
    shards = max(plan.shards, 1)
    with open(out / "sites.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["provider_id", "name", "lat", "lng", "places", "booked", "fill_rate", "shard"])
        for i, p in enumerate(r.providers):
            w.writerow(
                [
                    p.provider_id,
                    p.name,
                    p.lat,
                    p.lng,
                    int(r.places[i]),
                    int(r.booked[i]),
                    round(float(fill[i]), 4),
                    home_shard(p.cell(), shards),
                ]
            )
    with open(out / "shards.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shards", "hottest_shard_peak_ops_per_s"])
        for n, peak in plan.by_shards:
            w.writerow([n, round(peak, 2)])

    # --- plots ----------------------------------------------------------------------
    minutes = np.arange(per_min["bookings"].size) / 60
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(minutes, per_min["bookings"], label="bookings", color="tab:green", lw=1.2)
    ax.plot(
        minutes,
        per_min["holds_refused"],
        label="holds refused (409)",
        color="tab:red",
        lw=0.8,
        alpha=0.7,
    )
    ax.plot(
        minutes, per_min["holds_lapsed"], label="holds lapsed", color="tab:gray", lw=0.8, alpha=0.7
    )
    ax.set_xlabel("hours after the opening")
    ax.set_ylabel("per minute")
    ax.set_title("Bookings per minute")
    ax.legend()
    _save(fig, out / "bookings_per_minute.png")

    wait = (r.booked_at - r.arrival)[r.outcome == Outcome.BOOKED] / 60
    fig, ax = plt.subplots(figsize=(9, 4))
    if wait.size:
        ax.hist(
            wait,
            bins=np.logspace(
                np.log10(max(wait.min(), 0.1)), np.log10(max(wait.max(), 1)), 60
            ).tolist(),
            color="tab:blue",
        )
        ax.set_xscale("log")
        for q, style in ((50, "-"), (90, "--")):
            v = float(np.percentile(wait, q))
            ax.axvline(v, color="black", ls=style, lw=1, label=f"{q}th percentile: {v:.1f} min")
        ax.legend()
    ax.set_xlabel("minutes from arrival to confirmed booking (log scale)")
    ax.set_ylabel("residents")
    ax.set_title("Time to book")
    _save(fig, out / "time_to_book.png")

    hours_axis = np.arange(0, math.ceil(hours) + 1)
    booked_by = np.searchsorted(np.sort(r.confirm_times), hours_axis * 3600, side="right")
    arrived_by = np.searchsorted(r.arrival, hours_axis * 3600, side="right")
    fig, ax = plt.subplots(figsize=(9, 4))
    eligible = max(r.arrivals + r.not_arrived, 1)
    ax.plot(hours_axis, arrived_by / eligible, label="eligible who have come", color="tab:gray")
    ax.plot(hours_axis, booked_by / eligible, label="eligible who have booked", color="tab:green")
    places = max(int(r.places.sum()), 1)
    ax.plot(hours_axis, booked_by / places, label="places booked", color="tab:orange", ls="--")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("hours after the opening")
    ax.set_ylabel("share")
    ax.set_title("Share of the eligible population booked, by hour")
    ax.legend()
    _save(fig, out / "share_booked.png")

    proj, site_pos, marks = map_setup(r)
    fig, ax = plt.subplots(figsize=(8, 7.5))
    draw_hex_map(
        ax, r.cell_names, cells["unserved"].astype(float), "Reds", "residents without a booking",
        proj, site_pos, marks,
    )  # fmt: skip
    ax.set_title("Unserved demand by H3 cell")
    _save(fig, out / "unserved_map.png")

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 2]})
    km = cells["mean_km"]
    has = ~np.isnan(km)
    draw_hex_map(
        ax, [c for c, ok in zip(r.cell_names, has, strict=True) if ok], km[has], "viridis",
        "mean km to the booked site", proj, site_pos, marks,
    )  # fmt: skip
    ax.set_title("Travel distance by area")
    dist = r.distance_km[r.outcome == Outcome.BOOKED]
    ax2.hist(dist, bins=40, color="tab:purple")
    ax2.set_xlabel("km from home to the booked site")
    ax2.set_ylabel("residents")
    ax2.set_title("Travel distance, all bookings")
    _save(fig, out / "travel_distance.png")

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    sx, sy = proj.km(np.array([p.lat for p in r.providers]), np.array([p.lng for p in r.providers]))
    sc = ax.scatter(
        sx, sy, c=fill, cmap="RdYlGn_r", vmin=0, vmax=1, s=18, edgecolors="black",
        linewidths=0.3,
    )  # fmt: skip
    plt.colorbar(sc, ax=ax, label="fill rate", shrink=0.8)
    ax.set_aspect("equal")
    ax.grid(True, color="#bbb", lw=0.4, alpha=0.6)
    ax.set_xlabel(f"km east of {proj.describe()}")
    ax.set_ylabel("km north")
    ax.set_title("Fill rate per site")
    ax2.hist(fill, bins=20, range=(0, 1), color="tab:orange")
    ax2.set_xlabel("share of the site's places booked")
    ax2.set_ylabel("sites")
    _save(fig, out / "fill_rate.png")

    k = s.capacity
    span = hours * 3600
    t10 = np.arange(math.ceil(span / BIN)) * BIN / 3600
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 7))
    ax.plot(t10, _rate(r.searches, span, k.searches_per_try), label="GET /v1/search", lw=0.8)
    ax.plot(t10, _rate(r.hold_times, span), label="POST /v1/holds", lw=0.8)
    ax.plot(t10, _rate(r.confirm_times, span), label="POST /v1/bookings", lw=0.8)
    ax.set_xlabel("hours after the opening")
    ax.set_ylabel("requests/s (10 s windows)")
    ax.set_title("Load on the system, by endpoint")
    ax.legend()
    ns = [n for n, _ in plan.by_shards]
    ax2.plot(ns, [p for _, p in plan.by_shards], marker="o", label="hottest shard's peak ops/s")
    ax2.axhline(
        k.shard_ops_per_second * k.utilization,
        color="tab:red",
        ls="--",
        label=f"{k.utilization:.0%} of capacity ({k.shard_ops_per_second * k.utilization:,.0f}/s)",
    )
    ax2.set_xlabel("shards")
    ax2.set_ylabel("holds + bookings per s")
    needed = (
        f"{plan.shards} shard{'' if plan.shards == 1 else 's'}"
        if plan.shards
        else f"more than {MAX_SHARDS} shards"
    )
    ax2.set_title(f"Per-shard load: {needed} needed")
    ax2.legend()
    _save(fig, out / "load.png")

    write_html_map(
        out / "map.html",
        f"{s.name}: residents by H3 cell",
        r.cell_names,
        {"population": np.array([r.cells[c] for c in r.cell_names]), **cells},
        [(p.name, p.lat, p.lng) for p in r.providers],
        colour_by="unserved",
        landmarks=marks,
    )
    page = out / "index.html"
    page.write_text(_html(r, figures, plan, s.capacity))
    return page


def _html(r: SimResult, figures: dict[str, Any], plan: Plan, k: Any) -> str:
    s = r.scenario
    rows = "\n".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(_fmt(key, v))}</td></tr>"
        for key, v in figures.items()
    )
    shards = (
        f"<b>{plan.shards}</b> shard{'' if plan.shards == 1 else 's'} (the hottest peaks at "
        f"{plan.hottest_shard_rps:,.0f} ops/s)"
        if plan.shards
        else f"more than {MAX_SHARDS} shards: one cell alone peaks at "
        f"{plan.hottest_cell_rps:,.0f} ops/s; give its sites dedicated shards"
    )
    skipped = ""
    if r.skipped_sites:
        items = "".join(f"<li>{html.escape(x)}</li>" for x in r.skipped_sites[:50])
        skipped = f"<h2>Sites left out</h2><ul>{items}</ul>"
    sections = [
        (
            "bookings_per_minute.png",
            "How fast the slots go",
            "Confirmed bookings per minute after the opening, with the holds refused because "
            "somebody else took the slot first (409) and the holds that lapsed unconfirmed.",
        ),
        (
            "share_booked.png",
            "Who is booked, hour by hour",
            "The share of the eligible population that has come, and that has booked, by hour; "
            "the dashed line is the share of all places booked.",
        ),
        (
            "time_to_book.png",
            "How long people wait",
            "Minutes from a resident's first search to a confirmed booking, for those who booked.",
        ),
        (
            "unserved_map.png",
            "Who is left out, and where",
            "Residents without a booking at the end (gave up or still trying), per H3 cell; "
            "triangles are sites, labels postal codes. The interactive map (map.html) shows "
            "each cell's demand, bookings, unserved residents and nearest sites.",
        ),
        (
            "travel_distance.png",
            "How far people travel",
            "Mean distance from home to the booked site per H3 cell, and the spread over all "
            "bookings.",
        ),
        (
            "fill_rate.png",
            "Which sites fill",
            "The share of each site's places booked. Sites that stay green are in the wrong place"
            " or open at the wrong hours.",
        ),
        (
            "load.png",
            "What load reaches the system",
            "Requests per second by endpoint (peaks over 10-second windows), and the load on the "
            "hottest shard for each shard count.",
        ),
    ]
    body = "\n".join(
        f'<h2>{html.escape(t)}</h2><p>{html.escape(d)}</p><img src="{f}" alt="{html.escape(t)}">'
        for f, t, d in sections
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(s.name)}: launch model</title>
{STYLE}</head><body>
<h1>{html.escape(s.name)}</h1>
<p>{html.escape(s.description)}</p>
<p>Opening {html.escape(s.opens_at)}, {s.hours:g} hours modelled; {len(r.providers):,} sites with
{int(r.places.sum()):,} places over {s.sites.days} days from {s.first_day.isoformat()};
{r.arrivals + r.not_arrived:,} eligible residents
({s.demand.eligible_share:.0%} of {sum(r.cells.values()):,}).
Seed {s.seed}: the same scenario gives the same figures.</p>
<div class="plan"><h2>What to provision</h2>
<p>Peak load: {plan.peak_gateway_rps:,.0f} requests/s at the gateway
({plan.peak_search_rps:,.0f} searches,
{plan.peak_holds_rps:,.0f} holds, {plan.peak_bookings_rps:,.0f} bookings per second).
With {k.shard_ops_per_second:,.0f} ops/s per shard,
{k.gateway_requests_per_second:,.0f} requests/s per
gateway process, {k.redis_events_per_second:,.0f} journal events/s per Redis,
run at {k.utilization:.0%} of capacity ({1 - k.utilization:.0%} headroom):
{shards}, <b>{plan.gateways}</b> gateway process{"" if plan.gateways == 1 else "es"},
<b>{plan.redis_servers}</b> Redis server{"" if plan.redis_servers == 1 else "s"},
<b>{plan.nodes}</b> node{"" if plan.nodes == 1 else "s"} of {k.cores_per_node} cores.</p></div>
<h2>Key figures</h2><table>{rows}</table>
{body}
{skipped}
<h2>Data</h2><p><a href="map.html">map.html</a>: every cell's numbers on a map (hover or
tab to a cell). The figures behind the plots: <a href="summary.csv">summary.csv</a>,
<a href="minutes.csv">minutes.csv</a> (per minute),
<a href="cells.csv">cells.csv</a> (per H3 cell),
<a href="sites.csv">sites.csv</a> (per site, with its shard),
<a href="shards.csv">shards.csv</a>.</p>
</body></html>
"""
