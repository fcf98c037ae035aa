"""Sites put through the API for tests: one day laid out, no rolling horizon."""

from __future__ import annotations

from datetime import date

import httpx

WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def put_day_site(
    ops: httpx.Client,
    pid: str,
    service: str,
    day: date,
    *,
    lat: float,
    lng: float,
    capacity: int = 1,
    closes: str = "09:15",
) -> list[str]:
    """A site open 09:00 to ``closes`` on ``day`` with ``capacity`` places a slot (an
    operator's client ``ops``); the slot starts, as the API writes them."""
    body = {
        "name": f"Clinic {pid}",
        "lat": lat,
        "lng": lng,
        "timezone": "America/Chicago",
        "services": [service],
        "schedule": {
            "days": {d: [{"opens": "09:00", "closes": closes, "capacity": capacity}] for d in WEEK}
        },
        "first_day": f"{day}",
        "days": 1,
        "horizon_days": 0,
    }
    r = ops.put(f"/v1/providers/{pid}", json=body)
    assert r.status_code in (200, 201), r.text
    slots = ops.get(f"/v1/providers/{pid}/slots", params={"service": service})
    assert slots.status_code == 200, slots.text
    return [str(s["start"]) for s in slots.json()["slots"]]
