"""What-if: two simulated scenarios side by side in one report."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from simulators.maps import Projection, draw_hex_map
from simulators.report import (
    STYLE,
    _fmt,
    _per_minute,
    _save,
    map_setup,
    plan_capacity,
    summary,
)
from simulators.sim import Outcome, SimResult

__all__ = [
    "booked_by_arrival",
    "comparison_rows",
    "comparison_values",
    "difference",
    "room_figures",
    "served_by_cell",
    "write_comparison",
]

ROWS = (
    "sites",
    "places offered",
    "arrivals",
    "booked",
    "gave up",
    "still trying at the end",
    "share of arrivals booked",
    "fill rate",
    "minutes until half the places were booked",
    "minutes until 90% of the places were booked",
    "median minutes from arrival to booking",
    "90th percentile minutes to booking",
    "median km travelled",
    "peak bookings per minute",
    "holds refused (slot taken meanwhile)",
)


def booked_by_arrival(r: SimResult, parts: int = 10) -> np.ndarray:
    """The share booked of each tenth of the arrivals, in arrival order (a fair launch
    does not favour the first tenth beyond the places near them)."""
    booked = r.outcome == Outcome.BOOKED
    chunks = np.array_split(booked, parts) if booked.size else [np.zeros(0, bool)] * parts
    return np.array([c.mean() if c.size else 0.0 for c in chunks])


def room_figures(r: SimResult) -> dict[str, object]:
    """What the waiting room changes: load on the gateway, wasted 409s, who is told what."""
    load = [r.searches, r.hold_times, r.confirm_times]
    if r.joins is not None:
        load.append(r.joins)
    per_minute = _per_minute(np.concatenate(load), r.scenario.hours) if r.arrivals else [0]
    told = r.told_sold_out_at
    told_wait = (told - r.arrival)[np.isfinite(told)] if told is not None else np.zeros(0)
    first, *_, last = booked_by_arrival(r)
    return {
        "waiting room": "yes" if r.scenario.room is not None else "no",
        "peak gateway requests per minute (searches, holds, confirms, joins)": int(
            np.max(per_minute)
        ),
        "409s per booking": r.conflicts.size / max(r.count(Outcome.BOOKED), 1),
        "told sold out (sent to the waitlist)": int(told_wait.size),
        "median seconds from arrival to told sold out": (
            float(np.median(told_wait)) if told_wait.size else None
        ),
        "visitor-view polls (small, cacheable)": r.polls,
        "share booked of the first tenth of arrivals": float(first),
        "share booked of the last tenth of arrivals": float(last),
    }


Row = tuple[str, str, str, str, str]  # figure, A, B, A - B, (A - B) / B


def comparison_values(a: SimResult, b: SimResult) -> list[tuple[str, Any, Any]]:
    """(figure, A, B) as numbers (None: not reached; text for yes/no figures) for the
    figures a what-if is judged by, plus the plan."""
    fa, fb = summary(a), summary(b)
    rows: list[tuple[str, Any, Any]] = [(k, fa[k], fb[k]) for k in ROWS]
    ra, rb = room_figures(a), room_figures(b)
    rows += [(k, ra[k], rb[k]) for k in ra]
    pa, pb = plan_capacity(a), plan_capacity(b)
    rows += [
        ("peak gateway requests/s", pa.peak_gateway_rps, pb.peak_gateway_rps),
        ("shards needed", pa.shards, pb.shards),
        ("nodes needed", pa.nodes, pb.nodes),
    ]
    return rows


def difference(va: Any, vb: Any) -> tuple[float | None, float | None]:
    """A - B and (A - B) / |B| for two figures (None where either is not a number, and
    for the ratio where B is 0)."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (va, vb)):
        return None, None
    d = float(va) - float(vb)
    return d, (d / abs(float(vb)) if vb else None)


def comparison_rows(a: SimResult, b: SimResult) -> list[Row]:
    """(figure, A, B, A - B, (A - B) / B), formatted, for the table and the console."""
    out = []
    for key, va, vb in comparison_values(a, b):
        d, rel = difference(va, vb)
        shown = "" if d is None else _fmt(key, d) if isinstance(va, float) else f"{d:+,.0f}"
        if d is not None and d > 0 and not shown.startswith("+"):
            shown = "+" + shown
        out.append((key, _fmt(key, va), _fmt(key, vb), shown, "" if rel is None else f"{rel:+.1%}"))
    return out


def served_by_cell(a: SimResult, b: SimResult) -> tuple[list[str], np.ndarray]:
    """The cells of either city, and residents booked per cell in B minus in A."""
    cells = sorted(set(a.cell_names) | set(b.cell_names))
    index = {c: i for i, c in enumerate(cells)}
    diff = np.zeros(len(cells))
    for r, sign in ((b, 1.0), (a, -1.0)):
        booked = np.bincount(r.home[r.outcome == Outcome.BOOKED], minlength=len(r.cell_names))
        for c, n in zip(r.cell_names, booked, strict=True):
            diff[index[c]] += sign * n
    return cells, diff


def write_comparison(a: SimResult, b: SimResult, out: Path) -> tuple[Path, list[Row]]:
    """Write ``out/index.html`` with the side-by-side table (and the differences),
    overlaid plots, and a map of where B served more or fewer residents than A."""
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(a, b)
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["figure", "a", "b", "a_minus_b", "relative_to_b"])
        for key, va, vb in comparison_values(a, b):
            d, rel = difference(va, vb)
            cols = [va, vb, d, rel]
            w.writerow([key, *("" if v is None else v for v in cols)])
    cells, served = served_by_cell(a, b)
    proj = Projection.around(cells)
    _, sites_b, marks = map_setup(b)
    fig, ax = plt.subplots(figsize=(8, 7.5))
    draw_hex_map(
        ax, cells, served, "RdBu", "residents booked: B minus A", proj, sites_b, marks,
        centred=True,
    )  # fmt: skip
    ax.set_title("Where B served more (blue) or fewer (red) residents than A")
    _save(fig, out / "served_difference_map.png")
    hours = max(a.scenario.hours, b.scenario.hours)

    fig, ax = plt.subplots(figsize=(9, 4))
    for r, label, color in ((a, "A", "tab:blue"), (b, "B", "tab:orange")):
        pm = _per_minute(r.confirm_times, hours)
        ax.plot(np.arange(pm.size) / 60, pm, label=f"{label}: {r.scenario.name}", color=color, lw=1)
    ax.set_xlabel("hours after the opening")
    ax.set_ylabel("bookings per minute")
    ax.set_title("Bookings per minute")
    ax.legend()
    _save(fig, out / "bookings_per_minute.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    axis = np.arange(0, math.ceil(hours) + 1)
    for r, label, color in ((a, "A", "tab:blue"), (b, "B", "tab:orange")):
        booked = np.searchsorted(np.sort(r.confirm_times), axis * 3600, side="right")
        eligible = max(r.arrivals + r.not_arrived, 1)
        ax.plot(axis, booked / eligible, label=f"{label}: {r.scenario.name}", color=color)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("hours after the opening")
    ax.set_ylabel("share of the eligible booked")
    ax.set_title("Share of the eligible population booked, by hour")
    ax.legend()
    _save(fig, out / "share_booked.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    for r, label, color in ((a, "A", "tab:blue"), (b, "B", "tab:orange")):
        wait = np.sort((r.booked_at - r.arrival)[r.outcome == Outcome.BOOKED] / 60)
        if wait.size:
            ax.plot(
                wait,
                np.arange(1, wait.size + 1) / max(r.arrivals, 1),
                label=f"{label}: {r.scenario.name}",
                color=color,
            )
    ax.set_xscale("log")
    ax.set_xlabel("minutes from arrival to booking (log scale)")
    ax.set_ylabel("share of arrivals booked within")
    ax.set_title("Time to book")
    ax.legend()
    _save(fig, out / "time_to_book.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(10)
    for r, label, color, dx in ((a, "A", "tab:blue", -0.2), (b, "B", "tab:orange", 0.2)):
        ax.bar(x + dx, booked_by_arrival(r), 0.4, label=f"{label}: {r.scenario.name}", color=color)
    ax.set_xticks(x, [f"{10 * i}-{10 * i + 10}%" for i in x])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("arrivals in order (tenths)")
    ax.set_ylabel("share booked")
    ax.set_title("Share booked by arrival order")
    ax.legend()
    _save(fig, out / "booked_by_arrival.png")

    table = "\n".join(
        f"<tr><th>{html.escape(k)}</th>"
        + "".join(f"<td>{html.escape(v)}</td>" for v in vals)
        + "</tr>"
        for k, *vals in rows
    )
    page = out / "index.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>What-if: {html.escape(a.scenario.name)} vs {html.escape(b.scenario.name)}</title>
{STYLE}</head><body>
<h1>What-if</h1>
<p><b>A</b>: {html.escape(a.scenario.name)}: {html.escape(a.scenario.description)}<br>
<b>B</b>: {html.escape(b.scenario.name)}: {html.escape(b.scenario.description)}</p>
<table><tr><th></th><th>A</th><th>B</th><th>A &minus; B</th><th>(A &minus; B) / B</th></tr>
{table}</table>
<p>Every figure with its difference: <a href="comparison.csv">comparison.csv</a>.</p>
<h2>Where the what-if helped</h2><p>Residents booked per H3 cell in B minus in A: blue
where B served more, red where it served fewer; triangles are B's sites.</p>
<img src="served_difference_map.png" alt="residents booked, B minus A, by cell">
<h2>Bookings per minute</h2><img src="bookings_per_minute.png" alt="bookings per minute">
<h2>Share booked by hour</h2><img src="share_booked.png" alt="share booked">
<h2>Time to book</h2><p>Each curve rises to the share of arrivals who booked at all.</p>
<img src="time_to_book.png" alt="time to book">
<h2>Share booked by arrival order</h2><p>Each bar: the share of one tenth of the arrivals
(in the order they came) that booked.</p>
<img src="booked_by_arrival.png" alt="share booked by arrival order">
<p>Full reports: <a href="a/index.html">A</a>, <a href="b/index.html">B</a>.</p>
</body></html>
""")
    return page, rows
