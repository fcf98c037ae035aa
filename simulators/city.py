"""Where people live: population per H3 cell, synthetic or from a CSV, and home points
drawn from it. Load tests and the launch simulator place their residents with this, so
load lands on cells (and shards) as it would for real.

>>> cells = synthetic_city(population=100_000, seed=1)
>>> sum(cells.values())
100000
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from pathlib import Path

import h3
import numpy as np

__all__ = ["CHICAGO_CENTRES", "homes", "read_cells_csv", "synthetic_city", "write_cells_csv"]

# Dense neighbourhoods of a Chicago-like city: (lat, lng, weight, spread in km).
CHICAGO_CENTRES: tuple[tuple[float, float, float, float], ...] = (
    (41.881, -87.630, 3.0, 2.5),  # the Loop
    (41.940, -87.655, 2.5, 3.0),  # Lakeview
    (41.965, -87.700, 1.5, 3.5),
    (41.800, -87.600, 1.5, 3.5),
    (41.850, -87.710, 1.8, 3.0),
    (41.750, -87.650, 1.2, 4.0),
    (41.900, -87.760, 1.0, 3.5),
)


def synthetic_city(
    center: tuple[float, float] = (41.85, -87.68),
    radius_km: float = 18.0,
    population: int = 2_700_000,
    resolution: int = 8,
    centres: Sequence[tuple[float, float, float, float]] = CHICAGO_CENTRES,
    background: float = 0.15,
    seed: int = 2021,
) -> dict[str, int]:
    """Population per H3 cell inside ``radius_km`` of ``center``: a thin background
    (sparse areas) plus Gaussian neighbourhoods around ``centres``, with some noise.
    Counts add up to ``population`` exactly; the same seed gives the same city."""
    if population < 0 or radius_km <= 0:
        raise ValueError("population must be >= 0 and radius_km > 0")
    rng = np.random.default_rng(seed)
    origin = h3.latlng_to_cell(center[0], center[1], resolution)
    edge_km = h3.average_hexagon_edge_length(resolution, unit="km")
    k = math.ceil(radius_km / (edge_km * 1.5)) + 1
    cells, weights = [], []
    for cell in h3.grid_disk(origin, k):
        lat, lng = h3.cell_to_latlng(cell)
        if _km(center, (lat, lng)) > radius_km:
            continue
        w = background
        for clat, clng, weight, spread in centres:
            w += weight * math.exp(-((_km((clat, clng), (lat, lng)) / spread) ** 2))
        cells.append(cell)
        weights.append(w * rng.lognormal(0.0, 0.25))
    p = np.asarray(weights) / np.sum(weights)
    counts = rng.multinomial(population, p)
    return {c: int(n) for c, n in zip(cells, counts, strict=True) if n > 0}


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def homes(cells: dict[str, int], n: int, rng: random.Random) -> list[tuple[float, float]]:
    """``n`` home points: a cell drawn by its population, then a point near its centre
    (within about half an edge length)."""
    if not cells:
        raise ValueError("a city needs at least one populated cell")
    names = list(cells)
    chosen = rng.choices(names, weights=[cells[c] for c in names], k=n)
    out = []
    for cell in chosen:
        lat, lng = h3.cell_to_latlng(cell)
        edge_km = h3.average_hexagon_edge_length(h3.get_resolution(cell), unit="km")
        r = edge_km * 0.5 * math.sqrt(rng.random())
        theta = rng.uniform(0, 2 * math.pi)
        dlat = r * math.cos(theta) / 111.32
        dlng = r * math.sin(theta) / (111.32 * math.cos(math.radians(lat)))
        out.append((lat + dlat, lng + dlng))
    return out


def read_cells_csv(path: str | Path) -> dict[str, int]:
    """Population per cell from a CSV with columns ``cell,population`` (a header row).
    Bad rows raise ``ValueError`` naming the line."""
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"cell", "population"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: the header must name the columns cell,population")
        for row in reader:
            line = reader.line_num
            cell = (row.get("cell") or "").strip()
            if not h3.is_valid_cell(cell):
                raise ValueError(f"{path}:{line}: {cell!r} is not an H3 cell")
            try:
                count = int(row["population"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: population must be a whole number") from None
            if count < 0:
                raise ValueError(f"{path}:{line}: population must not be negative")
            out[cell] = out.get(cell, 0) + count
    if not out:
        raise ValueError(f"{path}: no cells")
    return out


def write_cells_csv(cells: dict[str, int], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "population"])
        for cell, n in sorted(cells.items()):
            w.writerow([cell, n])
