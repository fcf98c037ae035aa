"""Days pass for the gateway (issue 14): on the stack's clock, calendars roll on, the
search index's window follows, bookings of past days stay readable; calendars of every
slot length are searched. Real Ray, real Redis, real HTTP."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from tests.gateway.test_api import SCHEDULE, assert_problem
from tests.polling import until

pytestmark = pytest.mark.integration
TZ = "America/Chicago"
DAY = 86_400


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"index_first_day": None, "index_days": 10}  # a window that follows the clock


@pytest.fixture(scope="module")
def shard_options() -> dict[str, Any]:
    return {"roll_seconds": 0.2}


def local_today(hb: Hexbook) -> date:
    return datetime.fromtimestamp(hb.clock.seconds(), UTC).astimezone(ZoneInfo(TZ)).date()


def search(base: str, lat: float, day: date, service: str = "vaccine") -> list[dict[str, Any]]:
    params: dict[str, Any] = {"lat": lat, "lng": -87.63, "service": service, "radius_km": 5,
                              "from": f"{day}T00:00:00-06:00"}  # fmt: skip
    r = httpx.get(f"{base}/v1/search", params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def test_days_pass_and_search_finds_the_new_days(
    base: str, stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    hb = stack[1]
    today = local_today(hb)
    body = {**SCHEDULE, "lat": 42.05, "first_day": f"{today}", "days": 2, "horizon_days": 3}
    assert ops.put("/v1/providers/rolling-1", json=body).status_code == 201
    tomorrow = today + timedelta(days=1)
    until(lambda: any(r["provider_id"] == "rolling-1" for r in search(base, 42.05, tomorrow)))
    slot = httpx.get(f"{base}/v1/providers/rolling-1/slots?service=vaccine").json()["slots"]
    start = next(s["start"] for s in slot if s["start"].startswith(f"{tomorrow}"))
    hold = api.post("/v1/holds", json={"provider_id": "rolling-1", "service": "vaccine",
                                       "start": start}).json()  # fmt: skip
    booking = api.post(
        "/v1/bookings", json={"hold_id": hold["hold_id"], "patient": {"reference": "d0"}}
    ).json()

    # Three weeks on the stack's clock: gone are the first days, here are the new ones.
    hb.set_clock(offset=21 * DAY)
    later = today + timedelta(days=21)

    def found_later() -> list[dict[str, Any]]:
        hits = [r for r in search(base, 42.05, later) if r["provider_id"] == "rolling-1"]
        return [s for r in hits for s in r["next_slots"] if s["start"].startswith(f"{later}")]

    assert until(found_later)
    grid = httpx.get(f"{base}/v1/providers/rolling-1/slots?service=vaccine").json()["slots"]
    days = sorted({s["start"][:10] for s in grid})
    assert days[0] >= f"{later - timedelta(days=1)}" and days[-1] >= f"{later + timedelta(days=2)}"
    # A slot of the new days can be held (the gateway's clock moved too) ...
    new_start = next(
        s["start"] for s in grid if s["start"].startswith(f"{later + timedelta(days=1)}")
    )
    held = api.post("/v1/holds", json={"provider_id": "rolling-1", "service": "vaccine",
                                       "start": new_start})  # fmt: skip
    assert held.status_code == 201, held.text
    # ... one of three weeks ago has started long ago ...
    old = api.post("/v1/holds", json={"provider_id": "rolling-1", "service": "vaccine",
                                      "start": start})  # fmt: skip
    assert_problem(old, 409, "slot_unavailable")
    # ... and the booking of three weeks ago is still there, read from the archive.
    read = api.get(
        f"/v1/bookings/{booking['booking_id']}",
        headers={"X-Booking-Token": booking["booking_token"]},
    )
    assert read.status_code == 200 and read.json()["start"] == start, read.text
    assert stack[2].state.runtime.index.moves >= 1
    hb.set_clock(offset=0)


@pytest.mark.parametrize("minutes", [5, 30, 60])
def test_calendars_of_every_slot_length_are_searched(
    base: str, stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, minutes: int
) -> None:
    hb = stack[1]
    today = local_today(hb)
    pid = f"length-{minutes}"
    body = {**SCHEDULE, "lat": 41.70, "first_day": f"{today + timedelta(days=1)}", "days": 2,
            "slot_minutes": minutes}  # fmt: skip
    assert ops.put(f"/v1/providers/{pid}", json=body).status_code == 201

    def hit() -> list[str]:
        results = search(base, 41.70, today + timedelta(days=1))
        return [s["start"] for r in results if r["provider_id"] == pid for s in r["next_slots"]]

    starts = until(hit)
    # 09:00, then a slot length later: the calendar's own grid, not a 15-minute one.
    first, second = (datetime.fromisoformat(s) for s in starts[:2])
    assert (first.hour, first.minute) == (9, 0)
    assert second - first == timedelta(minutes=minutes)
