"""Where a patient is: a point from "lat, lng", a postal code (alone or in an address),
or a place name of the gazetteer (``places.csv``; no geocoding service is called)."""

from __future__ import annotations

import csv
import re
from functools import cache
from math import cos, radians
from pathlib import Path

import h3

__all__ = ["cell_map", "locate"]

_POINT = re.compile(r"^\s*(-?\d{1,2}(?:\.\d+)?)\s*,\s*(-?\d{1,3}(?:\.\d+)?)\s*$")
_POSTAL = re.compile(r"\b(\d{5})(?:-\d{4})?\b")


@cache
def _gazetteer() -> dict[str, tuple[float, float]]:
    path = Path(__file__).with_name("places.csv")
    with path.open(encoding="utf-8") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {r["name"].casefold(): (float(r["lat"]), float(r["lng"])) for r in rows}


def locate(text: str) -> tuple[float, float] | None:
    """The point ``text`` names, or ``None`` when it names none we know."""
    m = _POINT.match(text)
    if m:
        lat, lng = float(m.group(1)), float(m.group(2))
        return (lat, lng) if -90 <= lat <= 90 and -180 <= lng <= 180 else None
    places = _gazetteer()
    key = text.strip().casefold()
    if key in places:
        return places[key]
    for code in _POSTAL.findall(text):
        if code in places:
            return places[code]
    for name, point in places.items():  # "Pilsen, Chicago"
        if not name.isdigit() and re.search(rf"\b{re.escape(name)}\b", key):
            return point
    return None


def cell_map(
    values: dict[str, float],
    *,
    width: int = 640,
    label: str,
    marker: tuple[float, float] | None = None,
    titles: dict[str, str] | None = None,
) -> str:
    """An SVG map of H3 cells, each filled by its share of the largest value, with a
    ``<title>`` (shown on hover, read by screen readers) per cell."""
    if not values:
        return ""
    rings = {c: h3.cell_to_boundary(c) for c in values}
    lats = [p[0] for r in rings.values() for p in r]
    lngs = [p[1] for r in rings.values() for p in r]
    south, north, west, east = min(lats), max(lats), min(lngs), max(lngs)
    squash = cos(radians((south + north) / 2))
    span_x = max((east - west) * squash, 1e-9)
    span_y = max(north - south, 1e-9)
    height = max(int(width * span_y / span_x), 120)

    def xy(lat: float, lng: float) -> tuple[float, float]:
        return (
            round((lng - west) * squash / span_x * (width - 4) + 2, 1),
            round((north - lat) / span_y * (height - 4) + 2, 1),
        )

    top = max(values.values()) or 1.0
    parts = [
        f'<svg class="hexmap" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_attr(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for cell, value in sorted(values.items()):
        share = value / top
        # From pale to dark teal; every fill is drawn on white with a dark edge.
        light = 92 - int(62 * share)
        points = " ".join(f"{x},{y}" for x, y in (xy(a, b) for a, b in rings[cell]))
        title = (titles or {}).get(cell, f"{value:g}")
        parts.append(
            f'<polygon points="{points}" fill="hsl(180 60% {light}%)" stroke="#24403f" '
            f'stroke-width="0.6" data-cell="{cell}"><title>{_attr(title)}</title></polygon>'
        )
    if marker is not None:
        x, y = xy(*marker)
        parts.append(f'<circle cx="{x}" cy="{y}" r="5" fill="#b3261e" stroke="#fff"/>')
    parts.append("</svg>")
    return "".join(parts)


def _attr(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )
