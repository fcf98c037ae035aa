"""Geography and search, each checked against a brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from engine.geo import bounding_box, cells_covering, haversine_km, provider_cell
from engine.provider import Provider
from engine.search import AvailabilityGrid
from tests.strategies import latitudes, longitudes


def destination(lat: float, lng: float, km: float, bearing_deg: float) -> tuple[float, float]:
    d, b = km / 6371.0088, math.radians(bearing_deg)
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), math.degrees(l2)


@given(
    latitudes,
    longitudes,
    st.floats(0.2, 25.0),
    st.floats(0.0, 1.0),
    st.floats(0, 360),
    st.sampled_from([6, 7, 8, 9]),
)
def test_covering_cells_contain_every_point_within_the_radius(
    lat: float, lng: float, radius: float, frac: float, bearing: float, res: int
) -> None:
    other = destination(lat, lng, radius * frac, bearing)
    assert provider_cell(*other, res) in cells_covering(lat, lng, radius, res)


@given(st.floats(-90, 90), st.floats(-180, 180), st.floats(0.01, 500.0), st.floats(0.0, 1.0))
def test_bounding_box_holds_every_point_within_the_radius(
    lat: float, lng: float, radius: float, frac: float
) -> None:
    """Anywhere on Earth: search looks only inside this box, so a point within the
    radius outside it would be a site search never shows. Points all around the
    circle, on it (the widest reach east and west is at neither 90 nor 270 degrees)
    and inside it."""
    box = bounding_box(lat, lng, radius)
    if box is None:  # reaches a pole or crosses the antimeridian: no box, every row read
        return
    south, north, west, east = box
    for km in (radius * (1 - 1e-9), radius * frac):
        for bearing in np.linspace(0.0, 360.0, 361):
            plat, plng = destination(lat, lng, km, float(bearing))
            plng = (plng + 180.0) % 360.0 - 180.0
            if haversine_km(lat, lng, np.array([plat]), np.array([plng]))[0] <= radius:
                assert south <= plat <= north and west <= plng <= east, (bearing, km)


def test_bounding_box_is_none_where_a_box_cannot_hold_the_disk() -> None:
    assert bounding_box(89.99, 0.0, 5.0) is None  # the pole is in the disk
    assert bounding_box(0.0, 179.99, 5.0) is None  # crosses the antimeridian
    south, north, west, east = bounding_box(41.88, -87.63, 5.0) or (0, 0, 0, 0)
    assert north - 41.88 == pytest.approx(41.88 - south) == pytest.approx(0.045, abs=1e-3)
    assert east + 87.63 == pytest.approx(-87.63 - west) == pytest.approx(0.060, abs=1e-3)


@given(latitudes, longitudes, latitudes, longitudes)
def test_haversine_matches_the_scalar_formula(a: float, b: float, c: float, d: float) -> None:
    got = haversine_km(a, b, np.array([c]), np.array([d]))[0]
    p1, p2 = math.radians(a), math.radians(c)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(d - b) / 2) ** 2
    )
    assert got == pytest.approx(2 * 6371.0088 * math.asin(math.sqrt(h)), abs=1e-6)


@pytest.mark.parametrize(
    ("lat", "lng", "radius"),
    [(91, 0, 1), (0, 181, 1), (0, 0, 0), (0, 0, 501), (float("nan"), 0, 1)],
)
def test_bad_query_points_are_refused(lat: float, lng: float, radius: float) -> None:
    with pytest.raises(InvalidRequest):
        cells_covering(lat, lng, radius)


def provider(i: int, lat: float, lng: float, languages: tuple[str, ...] = ()) -> Provider:
    return Provider(
        provider_id=f"p{i}",
        name=f"Site {i}",
        lat=lat,
        lng=lng,
        timezone="America/Chicago",
        services=("vaccine", "flu"),
        languages=languages,
    )


sites = st.lists(
    st.tuples(
        latitudes,
        longitudes,
        st.lists(st.integers(0, 2), min_size=8, max_size=8),
        st.sampled_from(["vaccine", "flu"]),
        st.booleans(),
    ),
    min_size=1,
    max_size=30,
)


@given(
    sites,
    latitudes,
    longitudes,
    st.floats(1, 40),
    st.integers(0, 7),
    st.integers(1, 8),
    st.integers(1, 2),
    st.booleans(),
    st.sampled_from(["distance", "earliest"]),
    st.booleans(),
)
def test_search_equals_brute_force(
    rows: list[tuple[float, float, list[int], str, bool]],
    lat: float,
    lng: float,
    radius: float,
    a: int,
    width: int,
    party: int,
    spanish: bool,
    order: str,
    small_blocks: bool,
) -> None:
    grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=8)
    if small_blocks:  # read rows and columns in many small blocks: early stops, ties
        grid.block_rows, grid.block_cols = 2, 3
    expected = []
    for i, (plat, plng, free, service, speaks) in enumerate(rows):
        p = provider(i, plat, plng, ("es",) if speaks else ())
        grid.upsert(p, service, 0, np.array(free))
        dist = haversine_km(lat, lng, np.array([plat]), np.array([plng]))[0]
        cols = [c for c in range(a, min(a + width, 8)) if free[c] >= party]
        if service == "vaccine" and dist <= radius and cols and (speaks or not spanish):
            expected.append((cols[0], dist, p.provider_id, [(c * 900, free[c]) for c in cols[:3]]))
    expected.sort(key=lambda e: (e[1], e[0]) if order == "distance" else (e[0], e[1]))
    got = grid.search(
        lat,
        lng,
        radius,
        "vaccine",
        a * 900,
        (a + width) * 900,
        limit=3 if small_blocks else 10,
        party_size=party,
        languages=("es",) if spanish else (),
        order=order,
    )  # type: ignore[arg-type]
    limit = 3 if small_blocks else 10
    assert [(m.provider.provider_id, m.slots) for m in got] == [
        (e[2], e[3]) for e in expected[:limit]
    ]


def test_deltas_update_search() -> None:
    grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=4)
    grid.upsert(provider(1, 41.9, -87.6), "vaccine", 0, np.array([1, 0, 0, 0]))
    assert grid.search(41.9, -87.6, 1, "vaccine")[0].slots == [(0, 1)]
    assert grid.set_free("p1", "vaccine", 0, 0)
    assert grid.search(41.9, -87.6, 1, "vaccine") == []
    assert grid.set_free("p1", "vaccine", 1800, 2)
    assert grid.search(41.9, -87.6, 1, "vaccine")[0].slots == [(1800, 2)]
    assert not grid.set_free("p1", "vaccine", 450, 1)  # not a slot start
    assert not grid.set_free("nobody", "vaccine", 0, 1)


def test_next_slots_are_found_past_a_day_of_closed_slots() -> None:
    """Next slots are read a day of columns at a time from the first open one; a row
    whose next ones lie beyond that day must still get them, and others theirs."""
    grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=400)
    sparse, dense = np.zeros(400, dtype=np.int64), np.ones(400, dtype=np.int64)
    sparse[[5, 250, 251, 399]] = [1, 2, 1, 3]
    grid.upsert(provider(0, 41.88, -87.63), "vaccine", 0, sparse)
    grid.upsert(provider(1, 41.89, -87.63), "vaccine", 0, dense)
    got = grid.search(41.88, -87.63, 5, "vaccine", next_slots=4)
    assert [(m.provider.provider_id, m.slots) for m in got] == [
        ("p0", [(5 * 900, 1), (250 * 900, 2), (251 * 900, 1), (399 * 900, 3)]),
        ("p1", [(0, 1), (900, 1), (1800, 1), (2700, 1)]),
    ]
    got = grid.search(41.88, -87.63, 5, "vaccine", 200 * 900, 251 * 900, next_slots=4)
    assert got[0].slots == [(250 * 900, 2)]


def test_grid_grows_past_its_first_allocation() -> None:
    grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=2)
    for i in range(200):
        grid.upsert(provider(i, 41.9, -87.6 + i * 1e-4), "vaccine", 0, np.array([1, 1]))
    assert len(grid) == 200
    assert len(grid.search(41.9, -87.6, 50, "vaccine", limit=1000)) == 200


def test_calendar_not_aligned_to_grid_is_refused() -> None:
    grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=2)
    with pytest.raises(InvalidRequest, match="aligned"):
        grid.upsert(provider(1, 41.9, -87.6), "vaccine", 450, np.array([1]))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lat", 95.0, "outside"),
        ("provider_id", "bad id!", "provider id"),
        ("timezone", "Chicago", "IANA"),
        ("services", (), "at least one"),
    ],
)
def test_providers_are_validated(field: str, value: object, message: str) -> None:
    kwargs: dict[str, object] = {
        "provider_id": "p",
        "name": "n",
        "lat": 41.9,
        "lng": -87.6,
        "timezone": "America/Chicago",
        "services": ("vaccine",),
    }
    kwargs[field] = value
    with pytest.raises(InvalidRequest, match=message):
        Provider(**kwargs)  # type: ignore[arg-type]


def test_nearest_first_breaks_distance_ties_by_the_earliest_slot_across_blocks() -> None:
    """Six sites at one point, read two rows at a time: the three with the earliest free
    slots win, even though the first rows read already fill the limit."""
    grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=8)
    grid.block_rows = 2
    firsts = [5, 5, 3, 3, 0, 0]
    for i, f in enumerate(firsts):
        free = np.zeros(8, dtype=np.int64)
        free[f:] = 1
        grid.upsert(provider(i, 41.88, -87.63), "vaccine", 0, free)
    far = np.zeros(8, dtype=np.int64)
    far[0] = 1
    grid.upsert(provider(9, 41.90, -87.63), "vaccine", 0, far)  # 2 km away, free at once
    got = grid.search(41.88, -87.63, 10, "vaccine", 0, 8 * 900, limit=3)
    assert [m.provider.provider_id for m in got] == ["p4", "p5", "p2"]
    got = grid.search(41.88, -87.63, 10, "vaccine", 0, 8 * 900, limit=7)
    assert [m.provider.provider_id for m in got] == ["p4", "p5", "p2", "p3", "p0", "p1", "p9"]
    # One site at the point, four tied 2 km away: the tie is settled by the earliest slot
    # even when the tied rows span blocks read after the limit was reached.
    grid = AvailabilityGrid(start=0, slot_seconds=900, n_slots=8)
    grid.block_rows = 2
    for i, (lat, f) in enumerate([(41.88, 0), (41.90, 5), (41.90, 5), (41.90, 3), (41.90, 0)]):
        free = np.zeros(8, dtype=np.int64)
        free[f:] = 1
        grid.upsert(provider(i, lat, -87.63), "vaccine", 0, free)
    got = grid.search(41.88, -87.63, 10, "vaccine", 0, 8 * 900, limit=3)
    assert [m.provider.provider_id for m in got] == ["p0", "p4", "p3"]
