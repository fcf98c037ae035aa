"""How sure a figure is, and how it moves: a scenario run over several seeds (each key
figure with its spread, bands on the time plots), and a sweep of any scenario field
over a list of values (a table and a plot of the key figures against it).

Seeds vary the residents (``seed``: who comes when, how far they go, what they do); the
city and the sites stay as the scenario draws them (``city.seed``, ``sites.seed``), so the
spread is the launch's own chance, not a different city.
"""

from __future__ import annotations

import csv
import html
import math
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import msgspec
import numpy as np

from simulators.report import STYLE, _per_minute, _save, plan_capacity, summary
from simulators.scenario import Scenario, ScenarioError, validate
from simulators.sim import SimResult, simulate

__all__ = [
    "KEY_FIGURES",
    "Spread",
    "apply_setting",
    "figures_of",
    "parse_setting",
    "run_seeds",
    "spread",
    "write_spread",
    "write_sweep",
]

KEY_FIGURES = (
    "booked",
    "share of arrivals booked",
    "fill rate",
    "gave up",
    "minutes until half the places were booked",
    "minutes until 90% of the places were booked",
    "median minutes from arrival to booking",
    "peak bookings per minute",
    "holds refused (slot taken meanwhile)",
    "peak gateway requests/s",
    "shards needed",
)
ALIASES = {"sites": "sites.count", "population": "city.population", "hold_ttl": "holds.ttl_minutes"}


def figures_of(r: SimResult) -> dict[str, float]:
    """The key figures of one run as numbers (NaN: not reached)."""
    f = summary(r)
    plan = plan_capacity(r)
    f["peak gateway requests/s"] = plan.peak_gateway_rps
    f["shards needed"] = plan.shards
    return {k: math.nan if f[k] is None else float(f[k]) for k in KEY_FIGURES}


class Spread(msgspec.Struct, frozen=True):
    """One figure over ``n`` seeds: mean, standard deviation, the 95% interval of the
    mean (``mean ± ci95``), and the smallest and largest seen. ``reached``: the runs in
    which it had a value (a share of the places booked may never be reached)."""

    figure: str
    n: int
    reached: int
    mean: float
    sd: float
    ci95: float
    low: float
    high: float


def spread(runs: Sequence[dict[str, float]]) -> list[Spread]:
    """Each key figure's spread over ``runs`` (the figures of one run each)."""
    out = []
    for k in KEY_FIGURES:
        v = np.array([r[k] for r in runs], dtype=float)
        v = v[~np.isnan(v)]
        n = v.size
        sd = float(v.std(ddof=1)) if n > 1 else 0.0
        out.append(
            Spread(
                figure=k,
                n=len(runs),
                reached=int(n),
                mean=float(v.mean()) if n else math.nan,
                sd=sd,
                ci95=1.96 * sd / math.sqrt(n) if n > 1 else 0.0,
                low=float(v.min()) if n else math.nan,
                high=float(v.max()) if n else math.nan,
            )
        )
    return out


def run_seeds(
    s: Scenario, seeds: int, done: Callable[[int], None] | None = None, start: int = 0
) -> list[SimResult]:
    """``s`` with seeds ``s.seed``, ``s.seed + 1``, ... (``seeds`` runs); ``done(k)`` after
    each (``start`` runs counted before these, for a bar over several calls)."""
    out = []
    for i in range(seeds):
        out.append(simulate(msgspec.structs.replace(s, seed=s.seed + i)))
        if done is not None:
            done(start + i + 1)
    return out


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "not reached"
    return (
        f"{v:,.3f}" if abs(v) < 10 and v != int(v) else f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"
    )


def _band(ax: Any, curves: np.ndarray, x: np.ndarray, color: str, label: str) -> None:
    """Median of ``curves`` (runs x points) with its 10-90% band across runs."""
    lo, mid, hi = np.percentile(curves, [10, 50, 90], axis=0)
    ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0, label=f"{label}: 10-90% of seeds")
    ax.plot(x, mid, color=color, lw=1.2, label=f"{label}: median")


def write_spread(runs: Sequence[SimResult], out: Path) -> tuple[Path, list[Spread]]:
    """``out/spread.html`` with each key figure's spread and banded time plots, and
    ``spread.csv`` and ``seeds.csv`` (one row per seed)."""
    out.mkdir(parents=True, exist_ok=True)
    figures = [figures_of(r) for r in runs]
    rows = spread(figures)
    with open(out / "seeds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seed", *KEY_FIGURES])
        for r, one in zip(runs, figures, strict=True):
            w.writerow([r.scenario.seed, *("" if math.isnan(v) else v for v in one.values())])
    with open(out / "spread.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["figure", "seeds", "reached", "mean", "sd", "ci95", "low", "high"])
        for x in rows:
            w.writerow([x.figure, x.n, x.reached, x.mean, x.sd, x.ci95, x.low, x.high])
    hours = runs[0].scenario.hours
    per_min = np.array([_per_minute(r.confirm_times, hours) for r in runs], dtype=float)
    fig, ax = plt.subplots(figsize=(9, 4))
    _band(ax, per_min, np.arange(per_min.shape[1]) / 60, "tab:green", "bookings")
    ax.set_xlabel("hours after the opening")
    ax.set_ylabel("bookings per minute")
    ax.set_title(f"Bookings per minute over {len(runs)} seeds")
    ax.legend()
    _save(fig, out / "spread_bookings_per_minute.png")
    axis = np.arange(0, math.ceil(hours) + 1)
    shares = np.array(
        [
            np.searchsorted(np.sort(r.confirm_times), axis * 3600, side="right")
            / max(r.arrivals + r.not_arrived, 1)
            for r in runs
        ]
    )
    fig, ax = plt.subplots(figsize=(9, 4))
    _band(ax, shares, axis, "tab:blue", "share of the eligible booked")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("hours after the opening")
    ax.set_ylabel("share")
    ax.set_title(f"Share of the eligible booked, by hour, over {len(runs)} seeds")
    ax.legend()
    _save(fig, out / "spread_share_booked.png")
    table = "\n".join(
        f"<tr><th>{html.escape(x.figure)}</th><td>{_fmt(x.mean)}</td><td>± {_fmt(x.ci95)}</td>"
        f"<td>{_fmt(x.sd)}</td><td>{_fmt(x.low)}</td><td>{_fmt(x.high)}</td>"
        f"<td>{x.reached}/{x.n}</td></tr>"
        for x in rows
    )
    s = runs[0].scenario
    page = out / "spread.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(s.name)}: how sure</title>
{STYLE}</head><body>
<h1>{html.escape(s.name)}: {len(runs)} seeds</h1>
<p>The same city and sites, {len(runs)} draws of the residents (seeds {s.seed} to
{runs[-1].scenario.seed}). The 95% interval is that of the mean over the seeds: it narrows
as seeds are added; the standard deviation and the range are one launch's own spread.</p>
<table><tr><th></th><th>mean</th><th>95% interval</th><th>sd</th><th>lowest</th>
<th>highest</th><th>reached</th></tr>{table}</table>
<img src="spread_bookings_per_minute.png" alt="bookings per minute over the seeds">
<img src="spread_share_booked.png" alt="share booked by hour over the seeds">
<p>Data: <a href="spread.csv">spread.csv</a>, <a href="seeds.csv">seeds.csv</a>; the first
seed's full report: <a href="index.html">index.html</a>.</p>
</body></html>
""")
    return page, rows


def parse_setting(text: str) -> tuple[str, list[Any]]:
    """``sites.count=200,300,400`` -> ("sites.count", [200, 300, 400]); values are TOML
    (numbers, strings, booleans); ``sites`` is short for ``sites.count``."""
    path, eq, values = text.partition("=")
    path = path.strip()
    if not eq or not path or not values.strip():
        raise ScenarioError(f"--set {text!r}: use FIELD=V1,V2,... (e.g. sites.count=200,300)")
    out = []
    for v in values.split(","):
        v = v.strip()
        try:
            out.append(tomllib.loads(f"x = {v}")["x"])
        except tomllib.TOMLDecodeError:
            out.append(v)  # a bare word: a string
    if len(out) < 2:
        raise ScenarioError(f"--set {text!r}: give at least two values to sweep")
    return ALIASES.get(path, path), out


def _resolve(raw: dict[str, Any], path: str) -> list[str]:
    """The path's parts; a bare field name found in exactly one table is taken there."""
    parts = path.split(".")
    if len(parts) == 1 and parts[0] not in raw:
        tables = [k for k, v in raw.items() if isinstance(v, dict) and parts[0] in v]
        if len(tables) == 1:
            return [tables[0], parts[0]]
    node: Any = raw
    for i, p in enumerate(parts):
        if not isinstance(node, dict) or p not in node:
            where = ".".join(parts[:i]) or "the scenario"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise ScenarioError(f"--set {path}: {where} has no field {p!r} (it has: {known})")
        node = node[p]
    if isinstance(node, dict):
        raise ScenarioError(f"--set {path}: a table; name one of its fields ({', '.join(node)})")
    return parts


def apply_setting(s: Scenario, path: str, value: Any) -> Scenario:
    """``s`` with the field at ``path`` set to ``value``, checked as a scenario file is."""
    raw = msgspec.to_builtins(s)
    parts = _resolve(raw, path)
    node = raw
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    try:
        changed = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"--set {path}={value!r}: {exc}".replace("`$.", "`")) from None
    return validate(changed)


def write_sweep(
    path: str, values: Sequence[Any], runs: Sequence[Sequence[SimResult]], out: Path
) -> tuple[Path, list[tuple[Any, list[Spread]]]]:
    """``out/index.html`` with the key figures against the swept field (mean and 95%
    interval over the seeds of each value), ``sweep.csv`` (every run) and a plot per
    figure in ``sweep.png``."""
    out.mkdir(parents=True, exist_ok=True)
    table: list[tuple[Any, list[Spread]]] = []
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([path, "seed", *KEY_FIGURES])
        for value, rs in zip(values, runs, strict=True):
            figs = [figures_of(r) for r in rs]
            for r, one in zip(rs, figs, strict=True):
                w.writerow(
                    [value, r.scenario.seed, *("" if math.isnan(v) else v for v in one.values())]
                )
            table.append((value, spread(figs)))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    x = np.array(values, dtype=float) if numeric else np.arange(len(values))
    cols = 3
    rows_n = math.ceil(len(KEY_FIGURES) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(13, 3.1 * rows_n), squeeze=False)
    for i, k in enumerate(KEY_FIGURES):
        ax = axes[i // cols][i % cols]
        mean = np.array([sp[i].mean for _, sp in table])
        ci = np.array([sp[i].ci95 for _, sp in table])
        ax.errorbar(x, mean, yerr=ci, marker="o", capsize=3, lw=1.2)
        if np.isnan(mean).all():
            ax.text(0.5, 0.5, "not reached in any run", ha="center", transform=ax.transAxes)
        ax.set_title(k, fontsize=9)
        ax.grid(True, alpha=0.4)
        if not numeric:
            ax.set_xticks(x, [str(v) for v in values])
        if i // cols == rows_n - 1 or i + cols >= len(KEY_FIGURES):
            ax.set_xlabel(path)
    for j in range(len(KEY_FIGURES), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    seeds = len(runs[0])
    fig.suptitle(
        f"Key figures against {path}"
        + (f" (mean and 95% interval over {seeds} seeds)" if seeds > 1 else "")
    )
    _save(fig, out / "sweep.png")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in KEY_FIGURES)
    body = "\n".join(
        f"<tr><th>{html.escape(str(value))}</th>"
        + "".join(
            f"<td>{_fmt(sp.mean)}" + (f" ± {_fmt(sp.ci95)}" if sp.n > 1 else "") + "</td>"
            for sp in spreads
        )
        + "</tr>"
        for value, spreads in table
    )
    s = runs[0][0].scenario
    page = out / "index.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(s.name)}: sweep of
{html.escape(path)}</title>{STYLE}</head><body>
<h1>{html.escape(s.name)}: {html.escape(path)} swept</h1>
<p>{len(values)} values of <code>{html.escape(path)}</code>, {seeds} seed{"" if seeds == 1 else "s"}
each (from seed {s.seed}); everything else as the scenario has it.</p>
<div style="overflow-x:auto"><table><tr><th>{html.escape(path)}</th>{head}</tr>{body}</table></div>
<img src="sweep.png" alt="key figures against {html.escape(path)}">
<p>Every run: <a href="sweep.csv">sweep.csv</a>.</p>
</body></html>
""")
    return page, table
