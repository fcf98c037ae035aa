"""Search from the gateway's index, kept current from the availability stream."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.gateway.test_api import D1, SCHEDULE, assert_problem, slots

FROM = f"{D1}T00:00:00-06:00"


def search(base: str, **params: Any) -> dict[str, Any]:
    """An anonymous search (search is open, limited per address)."""
    r = httpx.get(f"{base}/v1/search", params={"service": "vaccine", "from": FROM, **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_nearest_first_with_next_slots_and_freshness(base: str) -> None:
    body = search(base, lat=41.88, lng=-87.63, radius_km=30, limit=10)
    ids = [r["provider_id"] for r in body["results"]]
    assert ids[0] == "clinic-1"  # it stands at the query point
    assert body["results"][0]["distance_km"] < 0.01
    dists = [r["distance_km"] for r in body["results"]]
    assert dists == sorted(dists)
    first = body["results"][0]["next_slots"][0]
    assert first["start"].endswith("-06:00")
    assert body["index"]["age_ms"] >= 0
    near = search(base, lat=41.88, lng=-87.63, radius_km=1)
    assert [r["provider_id"] for r in near["results"]] == ["clinic-1"]


def test_index_follows_bookings(base: str, api: httpx.Client) -> None:
    pid = "clinic-1"
    grid = slots(api, pid)
    target = next(s for s in grid if s["remaining"] == 2)
    window = {"from": target["start"], "lat": 41.88, "lng": -87.63, "radius_km": 0.5}
    assert search(base, **window)["results"][0]["next_slots"][0]["start"] == target["start"]
    for _ in range(2):
        h = api.post(
            f"{base}/v1/holds",
            json={"provider_id": pid, "service": "vaccine", "start": target["start"]},
        ).json()
        api.post(
            f"{base}/v1/bookings", json={"hold_id": h["hold_id"], "patient": {"reference": "r"}}
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        first = search(base, **window)["results"][0]["next_slots"][0]["start"]
        if first != target["start"]:
            break
        time.sleep(0.1)
    assert first != target["start"], "the index did not see the slot fill up"


def test_a_new_provider_becomes_searchable(base: str, ops: httpx.Client) -> None:
    r = ops.put(
        f"{base}/v1/providers/newcomer", json={**SCHEDULE, "lat": 41.70, "lng": -87.9}, timeout=60
    )
    assert r.status_code == 201  # created
    deadline = time.monotonic() + 10
    found: list[str] = []
    while time.monotonic() < deadline and "newcomer" not in found:
        found = [
            x["provider_id"] for x in search(base, lat=41.70, lng=-87.9, radius_km=1)["results"]
        ]
        time.sleep(0.1)
    assert found == ["newcomer"]


def test_filters(base: str) -> None:
    assert search(base, lat=41.88, lng=-87.63, radius_km=30, language="pl")["results"] == []
    spanish = search(base, lat=41.88, lng=-87.63, radius_km=30, language="es")["results"]
    assert spanish
    assert search(base, lat=41.88, lng=-87.63, radius_km=30, service="dentist")["results"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"lat": 100, "lng": 0},
        {"lat": 41.9, "lng": -87.6, "radius_km": 0},
        {"lat": 41.9, "lng": -87.6, "radius_km": 1000},
        {"lat": "north", "lng": 0},
        {"lat": 41.9, "lng": -87.6, "from": f"{D1}T09:00"},
        {"lat": 41.9, "lng": -87.6, "limit": 0},
        {"lat": 41.9, "lng": -87.6, "order": "random"},
    ],
)
def test_bad_search_parameters(base: str, params: dict[str, Any], api: httpx.Client) -> None:
    r = api.get(f"{base}/v1/search", params={"service": "vaccine", **params})
    assert_problem(r, 422, "validation_error")
