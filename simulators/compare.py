"""What-if: two simulated scenarios side by side in one report."""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from simulators.report import STYLE, _fmt, _per_minute, _save, plan_capacity, summary
from simulators.sim import Outcome, SimResult

__all__ = ["booked_by_arrival", "comparison_rows", "room_figures", "write_comparison"]

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
        "409s per booking": f"{r.conflicts.size / max(r.count(Outcome.BOOKED), 1):.3f}",
        "told sold out (sent to the waitlist)": int(told_wait.size),
        "median seconds from arrival to told sold out": (
            float(np.median(told_wait)) if told_wait.size else None
        ),
        "visitor-view polls (small, cacheable)": r.polls,
        "share booked of the first tenth of arrivals": float(first),
        "share booked of the last tenth of arrivals": float(last),
    }


def comparison_rows(a: SimResult, b: SimResult) -> list[tuple[str, str, str]]:
    """(figure, A, B) for the figures a what-if is judged by, plus the plan."""
    fa, fb = summary(a), summary(b)
    rows = [(k, _fmt(k, fa[k]), _fmt(k, fb[k])) for k in ROWS]
    ra, rb = room_figures(a), room_figures(b)
    rows += [(k, _fmt(k, ra[k]), _fmt(k, rb[k])) for k in ra]
    pa, pb = plan_capacity(a), plan_capacity(b)
    for label, va, vb in (
        ("peak gateway requests/s", pa.peak_gateway_rps, pb.peak_gateway_rps),
        ("shards needed", pa.shards, pb.shards),
        ("nodes needed", pa.nodes, pb.nodes),
    ):
        rows.append((label, _fmt(label, va), _fmt(label, vb)))
    return rows


def write_comparison(
    a: SimResult, b: SimResult, out: Path
) -> tuple[Path, list[tuple[str, str, str]]]:
    """Write ``out/index.html`` with the side-by-side table and overlaid plots."""
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(a, b)
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
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(va)}</td><td>{html.escape(vb)}</td></tr>"
        for k, va, vb in rows
    )
    page = out / "index.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>What-if: {html.escape(a.scenario.name)} vs {html.escape(b.scenario.name)}</title>
{STYLE}</head><body>
<h1>What-if</h1>
<p><b>A</b>: {html.escape(a.scenario.name)}: {html.escape(a.scenario.description)}<br>
<b>B</b>: {html.escape(b.scenario.name)}: {html.escape(b.scenario.description)}</p>
<table><tr><th></th><th>A</th><th>B</th></tr>{table}</table>
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
