"""Maps a planner can place: H3 cells drawn in kilometres from the city's centre, with a
grid, a scale bar, the sites, and postal codes (with their neighbourhood's name where the
offline table has one) as landmarks; and a self-contained HTML map whose cells show
their numbers on hover.

Landmarks come from the ``zipcodes`` package's table of US postal code centroids
(offline), or from the scenario's own population areas when it has them
(:func:`simulators.city.read_areas_csv`). Nothing is fetched: no tiles, no scripts.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import h3
import numpy as np

__all__ = ["Landmark", "Projection", "draw_hex_map", "landmarks_near", "write_html_map"]

KM_PER_DEG_LAT = 110.574


@dataclass(frozen=True)
class Landmark:
    name: str
    lat: float
    lng: float


@dataclass(frozen=True)
class Projection:
    """Degrees to km east and north of ``(lat0, lng0)`` (equirectangular: true to a few
    metres over a city)."""

    lat0: float
    lng0: float

    @classmethod
    def around(cls, cells: Sequence[str]) -> Projection:
        pts = np.array([h3.cell_to_latlng(c) for c in cells]) if cells else np.zeros((1, 2))
        return cls(float(pts[:, 0].mean()), float(pts[:, 1].mean()))

    def km(self, lat: float | np.ndarray, lng: float | np.ndarray) -> tuple[Any, Any]:
        kx = KM_PER_DEG_LAT * math.cos(math.radians(self.lat0)) * 1.0036  # 111.32 at the equator
        return (np.asarray(lng) - self.lng0) * kx, (np.asarray(lat) - self.lat0) * KM_PER_DEG_LAT

    def describe(self) -> str:
        ns = "N" if self.lat0 >= 0 else "S"
        ew = "E" if self.lng0 >= 0 else "W"
        return f"{abs(self.lat0):.3f}°{ns} {abs(self.lng0):.3f}°{ew}"


@lru_cache(maxsize=1)
def _postal_codes() -> tuple[Landmark, ...]:
    try:
        import zipcodes
    except ImportError:  # pragma: no cover - a core dependency
        return ()
    out = []
    for z in zipcodes.list_all():  # type: ignore[no-untyped-call]
        if z["zip_code_type"] != "STANDARD" or not z["active"] or not z["lat"]:
            continue
        names = z.get("unacceptable_cities") or []
        label = f"{z['zip_code']} {names[0]}" if names else z["zip_code"]
        out.append(Landmark(label, float(z["lat"]), float(z["long"])))
    return tuple(out)


def landmarks_near(
    cells: Sequence[str], areas: Sequence[Landmark] = (), most: int = 24
) -> list[Landmark]:
    """Up to ``most`` landmarks inside the cells' extent, spread out (no two closer than
    a tenth of the extent): the scenario's own areas first, else postal codes."""
    if not cells:
        return []
    pts = np.array([h3.cell_to_latlng(c) for c in cells])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pool = list(areas) or list(_postal_codes())
    inside = [m for m in pool if lo[0] <= m.lat <= hi[0] and lo[1] <= m.lng <= hi[1]]
    res = h3.get_resolution(cells[0])
    have = set(cells)
    inside = [m for m in inside if h3.latlng_to_cell(m.lat, m.lng, res) in have]
    proj = Projection(float(pts[:, 0].mean()), float(pts[:, 1].mean()))
    x, y = proj.km(pts[:, 0], pts[:, 1])
    gap = max(float(np.ptp(x)), float(np.ptp(y))) / 10
    chosen: list[tuple[Landmark, float, float]] = []
    for m in sorted(inside, key=lambda m: m.name):
        mx, my = proj.km(m.lat, m.lng)
        if all(math.hypot(mx - cx, my - cy) >= gap for _, cx, cy in chosen):
            chosen.append((m, float(mx), float(my)))
        if len(chosen) >= most:
            break
    return [m for m, _, _ in chosen]


def _nice(length: float) -> float:
    """A round scale-bar length near a fifth of ``length`` km."""
    target = max(length / 5, 0.1)
    base = 10 ** math.floor(math.log10(target))
    return float(max(m * base for m in (1, 2, 5) if m * base <= target))


def draw_hex_map(
    ax: Any,
    cells: Sequence[str],
    values: np.ndarray,
    cmap: str,
    label: str,
    proj: Projection,
    sites: Sequence[tuple[float, float]] = (),
    landmarks: Sequence[Landmark] = (),
    centred: bool = False,
) -> None:
    """``values`` per cell on ``ax`` in km from ``proj``'s origin, with a km grid, a
    scale bar, the sites (triangles) and landmark labels; ``centred``: a diverging
    scale around 0 (for differences)."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import TwoSlopeNorm
    from mpl_toolkits.axes_grid1.anchored_artists import (  # type: ignore[import-untyped]
        AnchoredSizeBar,
    )

    polys = []
    for c in cells:
        ring = np.array(h3.cell_to_boundary(c))
        x, y = proj.km(ring[:, 0], ring[:, 1])
        polys.append(np.column_stack([x, y]))
    norm = None
    if centred:
        span = float(np.max(np.abs(values))) if len(values) else 1.0
        norm = TwoSlopeNorm(0.0, -max(span, 1.0), max(span, 1.0))
    coll = PolyCollection(polys, array=values, cmap=cmap, norm=norm, edgecolors="none")
    ax.add_collection(coll)
    if sites:
        sx, sy = proj.km(np.array([s[0] for s in sites]), np.array([s[1] for s in sites]))
        ax.scatter(sx, sy, s=8, c="black", marker="^", label="sites", zorder=3)
        ax.legend(loc="lower left", fontsize=8)
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.grid(True, color="#bbb", lw=0.4, alpha=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel(f"km east of {proj.describe()}")
    ax.set_ylabel("km north")
    for m in landmarks:
        mx, my = proj.km(m.lat, m.lng)
        ax.annotate(
            m.name, (float(mx), float(my)), fontsize=6.5, ha="center", va="center",
            color="#113", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.6,
                                "lw": 0},
        )  # fmt: skip
    width = float(np.ptp(ax.get_xlim()))
    bar = _nice(width)
    ax.add_artist(
        AnchoredSizeBar(ax.transData, bar, f"{bar:g} km", "lower right", frameon=False,
                        size_vertical=width / 200, pad=0.6)
    )  # fmt: skip
    plt.colorbar(coll, ax=ax, label=label, shrink=0.8)


def write_html_map(
    path: Path,
    title: str,
    cells: Sequence[str],
    columns: dict[str, np.ndarray],
    sites: Sequence[tuple[str, float, float]],
    colour_by: str,
    landmarks: Sequence[Landmark] = (),
    nearest: int = 3,
) -> Path:
    """One HTML file, nothing fetched: an SVG of the cells (coloured by ``colour_by``),
    sites as triangles, and a panel that shows a cell's numbers (every column) and its
    ``nearest`` sites as the pointer or the keyboard focus rests on it."""
    proj = Projection.around(cells)
    vals = np.nan_to_num(np.asarray(columns[colour_by], dtype=float))
    top = float(vals.max()) if vals.size and vals.max() > 0 else 1.0
    site_lat = np.array([s[1] for s in sites]) if sites else np.zeros(0)
    site_lng = np.array([s[2] for s in sites]) if sites else np.zeros(0)
    sx, sy = proj.km(site_lat, site_lng)
    polys, data = [], []
    xs, ys = [], []
    for i, c in enumerate(cells):
        ring = np.array(h3.cell_to_boundary(c))
        x, y = proj.km(ring[:, 0], ring[:, 1])
        xs += list(x)
        ys += list(-y)
        lat, lng = h3.cell_to_latlng(c)
        row: dict[str, Any] = {"cell": c}
        for k, v in columns.items():
            f = float(v[i])
            row[k] = None if math.isnan(f) else round(f, 2) if v.dtype.kind == "f" else int(f)
        if sites:
            cx, cy = proj.km(lat, lng)
            d = np.hypot(sx - cx, sy - cy)
            row["nearest"] = [[sites[j][0], round(float(d[j]), 1)] for j in np.argsort(d)[:nearest]]
        data.append(row)
        share = float(vals[i]) / top
        fill = f"rgb({255},{round(245 - 200 * share)},{round(235 - 215 * share)})"
        pts = " ".join(f"{a:.3f},{-b:.3f}" for a, b in zip(x, y, strict=True))
        polys.append(
            f'<polygon points="{pts}" fill="{fill}" data-i="{i}" tabindex="0">'
            f"<title>{html.escape(c)}: {html.escape(colour_by)} {row[colour_by]}</title></polygon>"
        )
    u = (max(xs) - min(xs)) / 100 if xs else 0.1  # a hundredth of the map's width
    tri = "".join(
        f'<path d="M{a:.3f},{-b - u:.3f}l{0.9 * u:.3f},{1.6 * u:.3f}h{-1.8 * u:.3f}z" '
        f'class="site"><title>{html.escape(name)}</title></path>'
        for (name, _, _), a, b in zip(sites, sx, sy, strict=True)
    )
    marks = ""
    for m in landmarks:
        mx, my = proj.km(m.lat, m.lng)
        marks += f'<text x="{float(mx):.2f}" y="{-float(my):.2f}">{html.escape(m.name)}</text>'
    pad = 4 * u
    x0, x1 = (min(xs) - pad, max(xs) + pad) if xs else (-1, 1)
    y0, y1 = (min(ys) - pad, max(ys) + pad) if ys else (-1, 1)
    bar = _nice(x1 - x0)
    scale = (
        f'<g class="scale"><rect x="{x1 - pad - bar:.2f}" y="{y1 - pad:.2f}" width="{bar:g}" '
        f'height="{(y1 - y0) / 150:.3f}"/><text x="{x1 - pad - bar / 2:.2f}" '
        f'y="{y1 - pad - u:.2f}">{bar:g} km</text></g>'
    )
    names = json.dumps(list(columns))
    payload = json.dumps(data).replace("</", "<\\/")  # never ends the script element
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1em; color: #222; }}
.wrap {{ display: flex; gap: 1em; flex-wrap: wrap; }}
svg {{ flex: 1 1 600px; max-height: 85vh; border: 1px solid #ddd; background: #fafafa; }}
polygon {{ stroke: #fff; stroke-width: {u * 0.1:.4f}; }}
polygon:hover, polygon:focus {{ stroke: #000; stroke-width: {u * 0.4:.4f}; outline: none; }}
.site {{ fill: #111; pointer-events: none; }}
text {{ font-size: {u * 1.8:.4f}px; fill: #113; text-anchor: middle; pointer-events: none;
  paint-order: stroke; stroke: #fff; stroke-width: {u * 0.4:.4f}; }}
.scale rect {{ fill: #000; }}
#panel {{ flex: 0 0 18em; }} #panel th {{ text-align: left; padding-right: 1em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Cells coloured by <b>{html.escape(colour_by)}</b> (darker: more); triangles are sites;
km from {proj.describe()}. Point at a cell (or tab to it) to read its numbers.</p>
<div class="wrap">
<svg viewBox="{x0:.2f} {y0:.2f} {x1 - x0:.2f} {y1 - y0:.2f}" role="img"
 aria-label="{html.escape(title)}">{"".join(polys)}{tri}{marks}{scale}</svg>
<div id="panel" aria-live="polite"><p>No cell chosen.</p></div></div>
<script id="cells" type="application/json">{payload}</script>
<script>
const cells = JSON.parse(document.getElementById("cells").textContent);
const names = {names};
const panel = document.getElementById("panel");
const esc = (v) => String(v).replace(/[&<>"]/g, (ch) => "&#" + ch.charCodeAt(0) + ";");
function show(ev) {{
  const c = cells[ev.target.dataset.i];
  let rows = "<tr><th>cell</th><td>" + esc(c.cell) + "</td></tr>";
  for (const k of names) rows += "<tr><th>" + esc(k) + "</th><td>" + esc(c[k] ?? "") + "</td></tr>";
  if (c.nearest) rows += "<tr><th>nearest sites</th><td>" +
    c.nearest.map(s => esc(s[0]) + " (" + s[1] + " km)").join("<br>") + "</td></tr>";
  panel.innerHTML = "<table>" + rows + "</table>";
}}
for (const p of document.querySelectorAll("polygon")) {{
  p.addEventListener("mouseenter", show); p.addEventListener("focus", show);
}}
</script></body></html>
"""
    path.write_text(page)
    return path
