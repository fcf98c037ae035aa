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
from dataclasses import dataclass
from pathlib import Path

import h3
import numpy as np

__all__ = [
    "CHICAGO_CENTRES",
    "Area",
    "homes",
    "read_areas_csv",
    "read_cells_csv",
    "spread_areas",
    "synthetic_city",
    "write_cells_csv",
]

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


@dataclass(frozen=True)
class Area:
    """A row of a population table: a postal code or a census tract, where it is, how
    many live there, and how far around its centre they live."""

    area: str
    name: str
    lat: float
    lng: float
    population: int
    radius_km: float


def _postal_centroid(code: str) -> tuple[float, float] | None:
    import zipcodes

    try:
        found = zipcodes.matching(code.zfill(5))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError):
        return None
    return (float(found[0]["lat"]), float(found[0]["long"])) if found else None


def read_areas_csv(path: str | Path, radius_km: float = 1.5) -> list[Area]:
    """A population table by area (a header row): ``area,population`` and, optionally,
    ``lat,lng`` (the area's centre: needed for census tracts; a US postal code without
    them is placed at its centroid from the offline ``zipcodes`` table), ``name`` (a
    neighbourhood, for map labels) and ``radius_km`` (how far around the centre people
    live; ``radius_km`` by default). Bad rows raise ``ValueError`` naming the line."""
    out: list[Area] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if not {"area", "population"} <= fields:
            raise ValueError(f"{path}: the header must name at least the columns area,population")
        for row in reader:
            line = reader.line_num
            area = (row.get("area") or "").strip()
            if not area:
                raise ValueError(f"{path}:{line}: no area")
            try:
                population = int(row["population"])
                radius = float(row.get("radius_km") or radius_km)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}:{line}: population must be a whole number, radius_km a number"
                ) from None
            if population < 0 or not 0 < radius <= 50:
                raise ValueError(f"{path}:{line}: population >= 0, radius_km in (0, 50]")
            if row.get("lat") and row.get("lng"):
                try:
                    lat, lng = float(row["lat"]), float(row["lng"])
                except ValueError:
                    raise ValueError(f"{path}:{line}: lat and lng must be numbers") from None
                if not (-90 <= lat <= 90 and -180 <= lng <= 180):
                    raise ValueError(f"{path}:{line}: lat or lng out of range")
            else:
                where = _postal_centroid(area) if area.isdigit() else None
                if where is None:
                    raise ValueError(
                        f"{path}:{line}: {area!r} is not a US postal code the offline table "
                        "knows; give its lat,lng"
                    )
                lat, lng = where
            name = (row.get("name") or "").strip()
            out.append(Area(area, name, lat, lng, population, radius))
    if not out:
        raise ValueError(f"{path}: no areas")
    return out


def spread_areas(areas: Sequence[Area], resolution: int = 8) -> dict[str, int]:
    """Population per H3 cell: each area's people spread evenly over the cells within
    its radius of its centre (largest remainders, so the counts add up exactly)."""
    cells: dict[str, int] = {}
    edge_km = h3.average_hexagon_edge_length(resolution, unit="km")
    for a in areas:
        origin = h3.latlng_to_cell(a.lat, a.lng, resolution)
        k = max(0, math.ceil(a.radius_km / (edge_km * 1.5)))
        disk = [
            c for c in h3.grid_disk(origin, k)
            if _km((a.lat, a.lng), h3.cell_to_latlng(c)) <= a.radius_km
        ] or [origin]  # fmt: skip
        disk.sort()
        share, rest = divmod(a.population, len(disk))
        for i, c in enumerate(disk):
            n = share + (1 if i < rest else 0)
            if n:
                cells[c] = cells.get(c, 0) + n
    return cells


def write_cells_csv(cells: dict[str, int], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "population"])
        for cell, n in sorted(cells.items()):
            w.writerow([cell, n])
