"""The launch model: reproducible, conserving, within capacity, and sensible (more sites
book more people sooner); scenarios that cannot run say why."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.report import plan_capacity
from simulators.scenario import Room, ScenarioError, build_city, build_sites, parse_scenario
from simulators.sim import Outcome, SimResult, simulate

TOWN = """
name = "test town"
seed = 11
hours = 3
[city]
population = 20000
center = [41.88, -87.63]
radius_km = 3.0
[sites]
count = 6
seed = 5
hours = [["09:00", "12:00"]]
capacity = [1, 2]
weekend_share = 1.0
days = 1
[demand]
eligible_share = 0.03
travel_km_median = 2.0
travel_km_max = 5.0
max_tries = 3
retry_minutes = 10
[demand.arrivals]
first_decay_minutes = 20
second_wave_hours = 1.5
second_decay_minutes = 15
[holds]
ttl_minutes = 5
confirm_share = 0.8
"""


def town(**changes: object) -> SimResult:
    s = parse_scenario(TOWN)
    return simulate(msgspec.structs.replace(s, **changes) if changes else s)


def check_invariants(r: SimResult) -> None:
    booked = r.count(Outcome.BOOKED)
    # Conservation: every arrival ends booked, given up or still trying.
    assert booked + r.count(Outcome.GAVE_UP) + r.count(Outcome.WAITING) == r.arrivals
    # Each booking is one confirmed place, at one site, in the calendars.
    assert booked == r.confirm_times.size == int(r.booked.sum())
    assert np.array_equal(np.bincount(r.site[r.site >= 0], minlength=len(r.providers)), r.booked)
    # No slot over capacity.
    assert (r.booked_grid <= r.capacity_grid).all()
    assert (r.booked <= r.places).all()
    # Nobody books before arriving, or tries more than allowed.
    ok = r.outcome == Outcome.BOOKED
    assert (r.booked_at[ok] >= r.arrival[ok]).all()
    assert r.tries.max(initial=0) <= r.scenario.demand.max_tries
    assert (r.tries[r.outcome == Outcome.GAVE_UP] == r.scenario.demand.max_tries).all()


def test_same_seed_same_result_other_seed_differs() -> None:
    a, b = town(), town()
    assert a.arrivals > 100
    for field in (
        "arrival",
        "outcome",
        "booked_at",
        "site",
        "tries",
        "hold_times",
        "confirm_times",
    ):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    c = town(seed=12)
    assert not np.array_equal(a.arrival, c.arrival)


def test_conservation_and_capacity_hold() -> None:
    r = town()
    check_invariants(r)
    # The town is contested: some book, some give up, some holds are refused.
    assert r.count(Outcome.BOOKED) > 0 and r.count(Outcome.GAVE_UP) > 0
    assert r.conflicts.size > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    tries=st.integers(1, 5),
    confirm=st.floats(0.0, 1.0),
    choice=st.sampled_from(["nearest", "earliest"]),
    ttl=st.floats(0.5, 20.0),
    confirm_hi=st.floats(1.0, 1500.0),
)
def test_invariants_hold_for_any_behaviour(
    seed: int, tries: int, confirm: float, choice: str, ttl: float, confirm_hi: float
) -> None:
    s = parse_scenario(TOWN)
    s = msgspec.structs.replace(
        s,
        seed=seed,
        demand=msgspec.structs.replace(s.demand, max_tries=tries, choice=choice),
        holds=msgspec.structs.replace(
            s.holds, confirm_share=confirm, ttl_minutes=ttl, confirm_seconds=(0.0, confirm_hi)
        ),
    )
    r = simulate(s)
    check_invariants(r)
    if confirm_hi < ttl * 60 and confirm > 0:
        assert r.late_confirms == 0  # everyone confirms in time
    if confirm == 0:
        assert r.count(Outcome.BOOKED) == 0


def test_twice_the_sites_books_more_people_sooner() -> None:
    base = parse_scenario(TOWN)
    a = simulate(base)
    b = simulate(msgspec.structs.replace(base, sites=msgspec.structs.replace(base.sites, count=12)))
    # The first six sites are the same in both (generated in order from one seed).
    assert [p.provider_id for p in b.providers[:6]] == [p.provider_id for p in a.providers]
    assert (b.places[:6] == a.places).all()
    assert b.count(Outcome.BOOKED) > a.count(Outcome.BOOKED)
    hours = np.arange(1, 4) * 3600
    by_a = np.searchsorted(np.sort(a.confirm_times), hours)
    by_b = np.searchsorted(np.sort(b.confirm_times), hours)
    assert (by_b >= by_a).all() and by_b[-1] > by_a[-1]
    # B reaches A's final count of bookings before A does.
    total_a = a.confirm_times.size
    assert np.sort(b.confirm_times)[total_a - 1] < np.sort(a.confirm_times)[-1]


def test_shard_plan_spreads_load_until_it_fits() -> None:
    r = town()
    plan = plan_capacity(r)
    assert plan.shards == 1  # a small town fits one shard
    assert plan.peak_holds_rps > 0 and plan.peak_gateway_rps >= plan.peak_search_rps
    # A shard that takes just above the hottest cell's peak needs more than one shard,
    # and the plan's hottest shard fits under that capacity.
    tight = msgspec.structs.replace(
        r.scenario,
        capacity=msgspec.structs.replace(
            r.scenario.capacity, shard_ops_per_second=plan.hottest_cell_rps * 1.01, utilization=1.0
        ),
    )
    r.scenario = tight
    tight_plan = plan_capacity(r)
    assert tight_plan.shards > 1
    assert tight_plan.hottest_shard_rps <= plan.hottest_cell_rps * 1.01
    # Below the hottest cell no shard count is enough: the plan says so (0).
    r.scenario = msgspec.structs.replace(
        tight,
        capacity=msgspec.structs.replace(
            tight.capacity, shard_ops_per_second=plan.hottest_cell_rps * 0.5
        ),
    )
    assert plan_capacity(r).shards == 0


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('name = "x"\n[demand]\nmax_tries = "four"', "demand.max_tries"),
        ('name = "x"\n[demand]\neligible_share = 1.5', "demand.eligible_share"),
        ('name = "x"\n[sites]\ncount = 3\ncolour = "red"', "colour"),
        ('name = "x"\nopens_at = "tomorrow"', "opens_at"),
        ('name = "x"\nopens_at = "2026-12-01T08:00:00"', "opens_at"),
        ('name = "x"\ntimezone = "Mars/Olympus"', "timezone"),
        ('name = "x"\n[sites]\nhours = [["17:00", "09:00"]]', "sites"),
        ('name = "x"\n[holds]\ndecide_seconds = [90, 10]', "holds.decide_seconds"),
        ("name = ", "TOML"),
        ("[city]\npopulation = 5", "name"),
    ],
)
def test_bad_scenarios_name_the_field(text: str, names: str) -> None:
    with pytest.raises(ScenarioError, match=names):
        parse_scenario(text)


def test_sites_csv_keeps_good_rows_and_reports_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "sites.csv").write_text(
        "id,lat,lng,opens,closes,capacity,weekdays\n"
        "a,41.88,-87.63,09:00,12:00,2,mon tue\n"
        "b,91,-87.63,09:00,12:00,2,\n"
        "c,41.89,-87.62,12:00,09:00,2,\n"
        "d,41.89,-87.62,09:00,12:00,two,\n"
        "e,41.87,-87.64,08:00,10:00,1,funday\n"
        "f,41.87,-87.64,08:00,10:00,1,\n"
    )
    s = parse_scenario('name = "x"\n[sites]\ncount = 0\ncsv = "sites.csv"', tmp_path)
    sites, skipped = build_sites(s, build_city(s))
    assert [p.provider_id for p, _ in sites] == ["a", "f"]
    assert [x.split(": ")[0] for x in skipped] == [
        "sites.csv:3",
        "sites.csv:4",
        "sites.csv:5",
        "sites.csv:6",
    ]
    assert "latitude" in skipped[0] and "closes before it opens" in skipped[1]
    assert "funday" in skipped[3]


def test_the_shipped_examples_load() -> None:
    from simulators.scenario import load_scenario

    root = Path(__file__).resolve().parents[2] / "simulators" / "scenarios"
    names = sorted(p.name for p in root.glob("*.toml"))
    assert "chicago.toml" in names
    for name in names:
        s = load_scenario(root / name)
        assert s.name
    chicago = load_scenario(root / "chicago.toml")
    assert chicago.city.population == 2_700_000 and chicago.sites.count == 300
    assert chicago.sites.days == 7


def test_the_waiting_room_tells_the_sold_out_at_once_and_spares_the_gateway() -> None:
    """The town has fewer places than arrivals: with the room (the gateway's own rules,
    engine.room), those who come after the places are gone are told so on arrival
    instead of trying, nobody is admitted beyond the places, and the calendars stay
    within capacity."""
    s = parse_scenario(TOWN)
    room = Room(per_minute=30, near_km=5)
    without = simulate(s)
    r = simulate(msgspec.structs.replace(s, room=room))
    assert r.places.sum() < r.arrivals
    booked = r.count(Outcome.BOOKED)
    assert booked + r.count(Outcome.GAVE_UP) + r.count(Outcome.WAITING) == r.arrivals
    assert (r.booked_grid <= r.capacity_grid).all()
    assert r.told_sold_out_at is not None and r.admitted_at is not None and r.joins is not None
    told = np.isfinite(r.told_sold_out_at)
    assert told.sum() > r.arrivals // 2
    assert (r.outcome[told] == Outcome.GAVE_UP).all()
    never_admitted = told & np.isnan(r.admitted_at)
    assert (r.tries[never_admitted] == 0).all()  # told, never tried in vain
    assert (r.told_sold_out_at[told] >= r.arrival[told]).all()
    # admitted at most 30 a minute (the first tick starts with 2 s of it, at least 1)
    admitted = np.sort(r.admitted_at[np.isfinite(r.admitted_at)])
    per_minute = np.bincount((admitted // 60).astype(int))
    assert per_minute.max() <= 30 + 1
    assert r.joins.size >= r.arrivals and r.polls > 0
    # the gateway sees fewer holds and fewer wasted 409s for the same bookings
    assert r.hold_times.size < without.hold_times.size
    assert r.conflicts.size < without.conflicts.size
    assert abs(booked - without.count(Outcome.BOOKED)) <= 0.1 * booked


def test_a_population_table_by_postal_code_or_census_tract(tmp_path: Path) -> None:
    """areas_csv: postal codes are placed at their centroid from the offline table,
    census tracts at the lat,lng they give; each area's people are spread over the
    cells within its radius and add up exactly; bad rows name their line."""
    import h3

    from engine.geo import haversine_km
    from simulators.city import read_areas_csv, spread_areas
    from simulators.scenario import build_city, load_scenario

    table = tmp_path / "areas.csv"
    table.write_text(
        "area,population,lat,lng,name,radius_km\n"
        "60614,70001,,,Lincoln Park,2\n"  # a ZIP code: its centroid from the table
        "17031839100,3999,41.8781,-87.6298,tract 8391,0.5\n"  # a census tract
    )
    areas = read_areas_csv(table)
    assert [a.area for a in areas] == ["60614", "17031839100"]
    assert abs(areas[0].lat - 41.9229) < 1e-3 and abs(areas[0].lng + 87.6483) < 1e-3
    cells = spread_areas(areas, 8)
    assert sum(cells.values()) == 74_000
    for c, n in cells.items():
        lat, lng = h3.cell_to_latlng(c)
        near = min(haversine_km(lat, lng, a.lat, a.lng) - a.radius_km for a in areas)
        assert near <= 0 and n > 0  # every cell within an area's radius
    tract_cells = [c for c in cells if haversine_km(*h3.cell_to_latlng(c), 41.8781, -87.6298) < 1]
    assert 1 <= len(tract_cells) <= 7
    # A scenario takes the table, and its sites stand on the table's cells only.
    scenario = tmp_path / "zips.toml"
    scenario.write_text(
        'name = "zips"\n[city]\nareas_csv = "areas.csv"\n[sites]\ncount = 20\nspread = 1.0\n'
    )
    s = load_scenario(scenario)
    assert build_city(s) == cells
    sites, _ = build_sites(s, cells)
    assert all(
        min(haversine_km(p.lat, p.lng, *h3.cell_to_latlng(c)) for c in cells) < 1.5
        for p, _ in sites
    )
    # The shipped example adds up to its table.
    root = Path(__file__).resolve().parents[2] / "simulators" / "scenarios"
    shipped = load_scenario(root / "chicago-zips.toml")
    with open(root / "chicago-zips.csv", newline="") as f:
        total = sum(int(r["population"]) for r in csv.DictReader(f))
    assert sum(build_city(shipped).values()) == total > 2_000_000
    # Bad rows say where and what.
    bad = tmp_path / "bad.csv"
    for text, said in (
        ("area,population\n99999x,10\n", "bad.csv:2: '99999x' is not a US postal code"),
        ("area,population\n60614,-1\n", "bad.csv:2: population >= 0"),
        ("zip,people\n60614,1\n", "the header must name"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(said)):
            read_areas_csv(bad)
