"""The waitlist through the HTTP API (issue 17): join, see, leave; a cancelled place is
offered to the first in line as a hold of their own, which lapses to the next when not
taken, and which one call books; patients racing for two freed places get two offers,
one each. Real Ray (two shards), real Redis, real HTTP."""

from __future__ import annotations

import concurrent.futures
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from actors.audit import audit
from tests.dates import ahead
from tests.gateway.sites import put_day_site
from tests.gateway.test_api import assert_problem
from tests.polling import until
from tests.redis_values import every_value

pytestmark = pytest.mark.integration

OFFER_SECONDS = 3


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"index_first_day": None, "index_days": 20}


@pytest.fixture(scope="module")
def shard_options() -> dict[str, Any]:
    return {"offer_seconds": OFFER_SECONDS, "sweep_seconds": 0.2}


DAY = ahead(6)
LAT, LNG = 41.90, -87.70


def one_slot_site(ops: httpx.Client, pid: str, capacity: int = 1, lat: float = LAT) -> str:
    return put_day_site(ops, pid, "wl-vaccine", DAY, lat=lat, lng=LNG, capacity=capacity)[0]


def remaining(api: httpx.Client, pid: str) -> int:
    r = api.get(f"/v1/providers/{pid}/slots", params={"service": "wl-vaccine"})
    return int(r.json()["slots"][0]["remaining"])


def book(api: httpx.Client, pid: str, start: str, ref: str) -> dict[str, Any]:
    hold = api.post("/v1/holds", json={"provider_id": pid, "service": "wl-vaccine", "start": start})
    assert hold.status_code == 201, hold.text
    r = api.post(
        "/v1/bookings", json={"hold_id": hold.json()["hold_id"], "patient": {"reference": ref}}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def join(api: httpx.Client, ref: str, **over: Any) -> httpx.Response:
    body = {
        "service": "wl-vaccine",
        "area": {"lat": LAT, "lng": LNG, "radius_km": 5},
        "earliest": f"{ahead(1)}T00:00:00Z",
        "latest": f"{ahead(10)}T00:00:00Z",
        "patient": {
            "reference": ref,
            "contact": {"email": f"{ref}@example.org", "language": "es"},
        },
        **over,
    }
    return api.post("/v1/waitlist", json=body)


def entry(api: httpx.Client, joined: dict[str, Any]) -> dict[str, Any]:
    r = api.get(
        f"/v1/waitlist/{joined['entry_id']}",
        headers={"X-Waitlist-Token": joined["waitlist_token"]},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_cancelled_place_is_offered_lapses_to_the_next_and_one_call_books_it(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    start = one_slot_site(ops, "wl-site-1")
    first = book(api, "wl-site-1", start, "walk-in")
    a = join(api, "pat-a", party_size=1)
    assert a.status_code == 201, a.text
    a_entry = a.json()
    assert a_entry["status"] == "waiting" and a_entry["waitlist_token"]
    assert a_entry["patient"]["contact"] == {
        "email": "pat-a@example.org",
        "phone": None,
        "language": "es",
    }
    b_entry = join(api, "pat-b").json()
    assert entry(api, a_entry)["waitlist_token"] is None  # shown once
    # The booking is cancelled: its place goes to the first in line, as a hold (the two
    # joined in the same second or not: who is first is drawn or by time).
    r = api.delete(
        f"/v1/bookings/{first['booking_id']}", headers={"X-Booking-Token": first["booking_token"]}
    )
    assert r.status_code == 204, r.text

    def offered_one() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
        for mine, other in ((a_entry, b_entry), (b_entry, a_entry)):
            if (seen := entry(api, mine))["status"] == "offered":
                return mine, other, seen
        return None

    lead, rest, offered = until(offered_one)
    assert offered["offer"]["provider_id"] == "wl-site-1"
    assert offered["offer"]["start"] == start
    assert remaining(api, "wl-site-1") == 0  # the offer counts against capacity
    assert entry(api, rest)["status"] == "waiting"
    # Not taken in time: it passes to the next in line.
    until(lambda: entry(api, lead)["status"] == "lapsed")
    next_offer = until(lambda: (e := entry(api, rest))["status"] == "offered" and e)
    late = api.post(
        f"/v1/waitlist/{lead['entry_id']}/booking",
        headers={"X-Waitlist-Token": lead["waitlist_token"]},
    )
    assert_problem(late, 409, "no_offer")
    # One call books it, for the entry's patient; a repeat under its key answers the same.
    headers = {"X-Waitlist-Token": rest["waitlist_token"], "Idempotency-Key": "accept-b"}
    booked = api.post(f"/v1/waitlist/{rest['entry_id']}/booking", headers=headers)
    assert booked.status_code == 201, booked.text
    booking = booked.json()
    assert booking["start"] == next_offer["offer"]["start"]
    ref = rest["patient"]["reference"]
    assert booking["patient"] == {
        "reference": ref,
        "contact": {"email": f"{ref}@example.org", "phone": None, "language": "es"},
    }
    again = api.post(f"/v1/waitlist/{rest['entry_id']}/booking", headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["booking_id"] == booking["booking_id"]
    assert again.json()["booking_token"] == booking["booking_token"]
    read = api.get(
        f"/v1/bookings/{booking['booking_id']}",
        headers={"X-Booking-Token": booking["booking_token"]},
    )
    assert read.status_code == 200, read.text
    assert entry(api, rest)["status"] == "booked"
    assert remaining(api, "wl-site-1") == 0
    report = audit(stack[1].redis, keyring=stack[1].keyring)
    assert report.ok, report


def test_join_see_leave_and_bad_input(api: httpx.Client, ops: httpx.Client) -> None:
    one_slot_site(ops, "wl-site-2", lat=41.70)
    far = {"lat": 41.70, "lng": LNG, "radius_km": 1}
    joined = join(api, "pat-c", area=far, party_size=3).json()
    seen = entry(api, joined)
    assert (seen["status"], seen["party_size"]) == ("waiting", 3)
    assert seen["patient"]["contact"]["language"] == "es"
    wrong = api.get(f"/v1/waitlist/{joined['entry_id']}", headers={"X-Waitlist-Token": "nope"})
    assert_problem(wrong, 404, "waitlist_entry_not_found")
    assert ops.get(f"/v1/waitlist/{joined['entry_id']}").status_code == 200  # operators may
    r = api.delete(
        f"/v1/waitlist/{joined['entry_id']}", headers={"X-Waitlist-Token": joined["waitlist_token"]}
    )
    assert r.status_code == 204, r.text
    assert entry(api, joined)["status"] == "cancelled"
    # A repeat under its Idempotency-Key is the same entry, with the same token.
    key = {"Idempotency-Key": "join-d"}
    body = {
        "service": "wl-vaccine",
        "area": far,
        "earliest": f"{ahead(1)}T00:00:00Z",
        "latest": f"{ahead(10)}T00:00:00Z",
        "party_size": 3,
        "patient": {"reference": "pat-d"},
    }
    one = api.post("/v1/waitlist", json=body, headers=key).json()
    two = api.post("/v1/waitlist", json=body, headers=key).json()
    assert (one["entry_id"], one["waitlist_token"]) == (two["entry_id"], two["waitlist_token"])
    other = api.post("/v1/waitlist", json={**body, "party_size": 2}, headers=key)
    assert_problem(other, 422, "idempotency_conflict")
    for bad in (
        {"area": {}},
        {"area": {"lat": LAT, "lng": LNG}},
        {"area": {"cells": ["zz"]}},
        {"area": {"cells": ["fffffffffffffff"]}},  # the right shape, not a cell
        {"latest": f"{ahead(1)}T00:00:00Z"},
        {"party_size": 0},
        {"patient": {"reference": "pat-e", "contact": {"language": "fr"}}},
        {"earliest": "tomorrow"},
    ):
        assert_problem(join(api, "pat-e", **bad), 422, "validation_error")
    accept = api.post(
        f"/v1/waitlist/{one['entry_id']}/booking",
        headers={"X-Waitlist-Token": one["waitlist_token"]},
    )
    assert_problem(accept, 409, "no_offer")
    assert api.get("/v1/waitlist/not-an-id").status_code == 422


def test_patients_racing_for_two_freed_places_get_one_offer_each(
    ops: httpx.Client, api: httpx.Client
) -> None:
    start = one_slot_site(ops, "wl-site-3", capacity=2, lat=41.60)
    taken = [book(api, "wl-site-3", start, f"first-{i}") for i in range(2)]
    area = {"lat": 41.60, "lng": LNG, "radius_km": 2}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        joined = list(pool.map(lambda i: join(api, f"racer-{i}", area=area).json(), range(12)))
    assert len({j["entry_id"] for j in joined}) == 12
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        cancels = pool.map(
            lambda b: (
                api.delete(
                    f"/v1/bookings/{b['booking_id']}",
                    headers={"X-Booking-Token": b["booking_token"]},
                ).status_code
            ),
            taken,
        )
        assert list(cancels) == [204, 204]

    def offers() -> list[dict[str, Any]]:
        seen = [entry(api, j) for j in joined]
        return [e for e in seen if e["status"] == "offered"]

    got = until(lambda: len(o := offers()) == 2 and o)
    assert len({e["offer"]["hold_id"] for e in got}) == 2
    assert len({e["patient"]["reference"] for e in got}) == 2
    assert remaining(api, "wl-site-3") == 0


def test_an_entry_is_sealed_at_rest_and_erased_on_request(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    hb = stack[1]
    email, phone = "wl.sealed@example.org", "+13125550142"
    joined = join(
        api,
        "wl-erase-1",
        patient={"reference": "wl-erase-1", "contact": {"email": email, "phone": phone}},
        attestation={"birth_date": "1951-07-30"},
    )
    assert joined.status_code == 201, joined.text
    needles = (email.encode(), phone.encode(), b"1951-07-30")
    for shard in hb.directory.shards:  # the shards' snapshots hold the entry too
        hb._call(shard, "write_snapshot")
    assert not [n for n in needles if n in every_value(hb.redis)]  # sealed everywhere
    r = ops.post("/v1/erasures", json={"patient_ref": "wl-erase-1"})
    assert r.status_code == 200, r.text
    gone = api.get(
        f"/v1/waitlist/{joined.json()['entry_id']}",
        headers={"X-Waitlist-Token": joined.json()["waitlist_token"]},
    )
    assert_problem(gone, 404, "waitlist_entry_not_found")
    for shard in hb.directory.shards:
        state = hb._call(shard, "committed_state")
        assert b"wl-erase-1" not in state  # off every shard's list


def test_one_patient_waits_once_per_service_even_when_racing(api: httpx.Client) -> None:
    area = {"lat": 41.50, "lng": LNG, "radius_km": 1}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: join(api, "pat-twice", area=area), range(6)))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 5, [r.text for r in answers]
    first = next(r.json() for r in answers if r.status_code == 201)
    for r in answers:
        if r.status_code == 409:
            assert_problem(r, 409, "already_waiting")
            assert first["entry_id"] in r.json()["detail"]
    # Another service is another wait; leaving frees the patient to join again.
    assert join(api, "pat-twice", area=area, service="other-service").status_code == 201
    token = {"X-Waitlist-Token": first["waitlist_token"]}
    assert api.delete(f"/v1/waitlist/{first['entry_id']}", headers=token).status_code == 204
    again = join(api, "pat-twice", area=area)
    assert again.status_code == 201, again.text
    assert again.json()["entry_id"] != first["entry_id"]


def test_an_entry_expires_when_its_time_is_up(api: httpx.Client) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    area = {"lat": 41.45, "lng": LNG, "radius_km": 1}
    joined = join(api, "pat-brief", area=area, expires_at=soon)
    assert joined.status_code == 201, joined.text
    assert joined.json()["expires_at"] == soon.replace("Z", "+00:00")
    until(lambda: entry(api, joined.json())["status"] == "expired", seconds=30)
    again = join(api, "pat-brief", area=area)  # an entry that is over frees its patient
    assert again.status_code == 201, again.text


def test_an_offer_is_accepted_only_if_the_rule_admits_what_the_patient_attested(
    ops: httpx.Client, api: httpx.Client
) -> None:
    start = put_day_site(ops, "wl-elig-1", "wl-elig", DAY, lat=41.40, lng=LNG, capacity=2)[0]
    assert ops.put("/v1/rules/wl-elig", json={"ages": [{"min_years": 65}]}).status_code == 201
    old = {"birth_date": "1950-01-02"}
    taken = []
    for n in range(2):
        hold = api.post(
            "/v1/holds",
            json={
                "provider_id": "wl-elig-1",
                "service": "wl-elig",
                "start": start,
                "attestation": old,
            },
        )
        assert hold.status_code == 201, hold.text
        body = {"hold_id": hold.json()["hold_id"], "patient": {"reference": f"elig-{n}"}}
        taken.append(api.post("/v1/bookings", json=body).json())
    area = {"lat": 41.40, "lng": LNG, "radius_km": 1}
    young = join(
        api, "wl-young", service="wl-elig", area=area, attestation={"birth_date": "2001-05-05"}
    )
    aged = join(api, "wl-aged", service="wl-elig", area=area, attestation=old)
    assert young.status_code == aged.status_code == 201
    for b in taken:  # both places free up: one offer each
        token = {"X-Booking-Token": b["booking_token"]}
        assert api.delete(f"/v1/bookings/{b['booking_id']}", headers=token).status_code == 204
    for who in (young, aged):
        until(lambda who=who: entry(api, who.json())["status"] == "offered")
    refused = api.post(
        f"/v1/waitlist/{young.json()['entry_id']}/booking",
        headers={"X-Waitlist-Token": young.json()["waitlist_token"]},
    )
    assert_problem(refused, 403, "not_eligible")
    assert refused.json()["reasons"][0].startswith("age ")
    booked = api.post(
        f"/v1/waitlist/{aged.json()['entry_id']}/booking",
        headers={"X-Waitlist-Token": aged.json()["waitlist_token"]},
    )
    assert booked.status_code == 201, booked.text
