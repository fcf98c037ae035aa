"""Retention on a running stack (real Ray, real redis-server): ``retention_days`` after
an appointment ends, its patient data is purged by the gateway's sweep; the booking
stays, and the audit trail has the purge."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from tests.gateway.test_api import slots
from tests.polling import until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"retention_days": 0, "retention_sweep_seconds": 0.5}


def test_patient_data_is_purged_once_its_retention_has_run_out(
    stack: tuple[str, Hexbook, FastAPI], base: str, api: httpx.Client, ops: httpx.Client
) -> None:
    _, hb, _ = stack
    grid = slots(api, "clinic-1")
    made = []
    for slot, email in ((grid[0], "first@example.org"), (grid[-1], "last@example.org")):
        ask = {"provider_id": "clinic-1", "service": "vaccine", "start": slot["start"],
               "attestation": {"birth_date": "1940-01-01"}}  # fmt: skip
        hold = api.post("/v1/holds", json=ask)
        assert hold.status_code == 201, hold.text
        body = {"hold_id": hold.json()["hold_id"],
                "patient": {"reference": email, "contact": {"email": email}}}  # fmt: skip
        made.append(api.post("/v1/bookings", json=body).json())
    first, last = made
    # Time passes until just after the first appointment ended (not the last one).
    end = datetime.fromisoformat(grid[0]["start"]).timestamp() + 15 * 60
    hb.set_clock(offset=end - time.time() + 60)
    try:

        def read(b: dict[str, Any]) -> dict[str, Any]:
            r = api.get(f"/v1/bookings/{b['booking_id']}",
                        headers={"X-Booking-Token": b["booking_token"]})  # fmt: skip
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        until(lambda: "contact" not in read(first)["patient"], 60)
        assert read(first)["status"] == "active"  # the booking stays, without the data
        assert read(last)["patient"]["contact"] == {
            "email": "last@example.org",
            "phone": None,
            "language": "en",
        }
        trail = ops.get("/v1/audit", params={"limit": 1000}).json()
        purges = [e for e in trail if e["action"] == "patient.purge"]
        assert len(purges) == 1 and purges[0]["who"] == "system:retention"
        assert purges[0]["target"].startswith("bookings=1 ")
    finally:
        hb.set_clock(offset=0)
