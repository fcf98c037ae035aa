"""Geography: H3 cells for providers and queries, and vectorized distances.

A provider lives in the H3 cell of its position; a query "within r km of a point" is
answered from the cells that cover that disk (:func:`cells_covering`), so the question
"what is open near me" touches only the shards that own those cells.

>>> cells = cells_covering(41.88, -87.63, 2.0, 8)
>>> provider_cell(41.885, -87.625, 8) in cells
True
"""

from __future__ import annotations

import math

import h3
import numpy as np

from engine.errors import InvalidRequest

__all__ = [
    "DEFAULT_RESOLUTION",
    "EARTH_RADIUS_KM",
    "bounding_box",
    "cells_covering",
    "check_area",
    "haversine_km",
    "provider_cell",
]

DEFAULT_RESOLUTION = 8  # cells of ~0.7 km²: a city has a few thousand
EARTH_RADIUS_KM = 6371.0088


def check_area(
    cells: tuple[str, ...], lat: float | None, lng: float | None, radius_km: float | None,
    what: str,
) -> bool:  # fmt: skip
    """Raise :class:`InvalidRequest` for an area (``what``: how messages name it) with a
    cell that is no H3 cell, or half a radius; whether it has a radius."""
    for cell in cells:
        if not h3.is_valid_cell(cell):
            raise InvalidRequest(f"{what} cell {cell!r} is not an H3 cell")
    if lat is None and lng is None and radius_km is None:
        return False
    if lat is None or lng is None or radius_km is None:
        raise InvalidRequest(f"a {what} radius needs lat, lng and radius_km")
    if not (-90 <= lat <= 90 and -180 <= lng <= 180) or not 0 < radius_km <= 500:
        raise InvalidRequest(f"a {what} radius needs a position and 0 < km <= 500")
    return True


def _check_point(lat: float, lng: float) -> None:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0) or math.isnan(lat + lng):
        raise InvalidRequest(
            f"position ({lat}, {lng}) is outside latitude -90..90, longitude -180..180"
        )


def provider_cell(lat: float, lng: float, resolution: int = DEFAULT_RESOLUTION) -> str:
    """The H3 cell containing the point at ``resolution`` (0 to 15)."""
    _check_point(lat, lng)
    if not 0 <= resolution <= 15:
        raise InvalidRequest(f"H3 resolution {resolution} must be 0 to 15")
    return str(h3.latlng_to_cell(lat, lng, resolution))


def cells_covering(
    lat: float, lng: float, radius_km: float, resolution: int = DEFAULT_RESOLUTION
) -> set[str]:
    """Every cell at ``resolution`` that may hold a point within ``radius_km`` of (lat, lng).

    A superset: the caller filters candidates by exact distance. The ring count comes
    from the shortest edge around the centre cell, so distortion cannot leave a gap.
    """
    if not 0 < radius_km <= 500 or math.isnan(radius_km):
        raise InvalidRequest(f"radius {radius_km} km must be more than 0 and at most 500")
    centre = provider_cell(lat, lng, resolution)
    edge_km = min(h3.edge_length(e, "km") for e in h3.origin_to_directed_edges(centre))
    # Neighbouring centres are sqrt(3) * edge apart; each ring adds at least 1.5 * edge of
    # reach beyond the centre cell; one more ring covers the centre cell's own extent.
    rings = math.ceil(radius_km / (1.5 * edge_km)) + 1
    return {str(c) for c in h3.grid_disk(centre, rings)}


def bounding_box(
    lat: float, lng: float, radius_km: float
) -> tuple[float, float, float, float] | None:
    """(south, north, west, east) in degrees of a box holding every point within
    ``radius_km`` of (lat, lng); None when that disk reaches a pole or crosses the
    antimeridian (then no box is cheaper than looking at every point).

    The longitude half-width is the exact one of a spherical cap, asin(sin d / cos lat),
    widened by a millionth so rounding cannot cut a point on the edge.
    """
    d = radius_km / EARTH_RADIUS_KM
    p = math.radians(lat)
    if d >= math.pi / 2 or abs(p) + d >= math.pi / 2 * 0.999:
        return None
    half_lat = math.degrees(d) * 1.000001 + 1e-9
    half_lng = math.degrees(math.asin(math.sin(d) / math.cos(p))) * 1.000001 + 1e-9
    if abs(lng) + half_lng >= 180.0:
        return None
    return lat - half_lat, lat + half_lat, lng - half_lng, lng + half_lng


def haversine_km(lat: float, lng: float, lats: np.ndarray, lngs: np.ndarray) -> np.ndarray:
    """Great-circle distance in km from one point to many (vectorized)."""
    p1, l1 = math.radians(lat), math.radians(lng)
    p2, l2 = np.radians(lats), np.radians(lngs)
    a = np.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    out: np.ndarray = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
    return out
