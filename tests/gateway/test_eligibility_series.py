"""Who may book, and dose series, through the HTTP API (issue 16): a rule refuses at
hold with a problem naming it and its version, a rule tightened between hold and confirm
refuses the confirm, a new version lists (never cancels) the bookings it would refuse;
series are held and booked whole, and 300 clients racing for 10 series of capacity 2 get
exactly 20 whole series. Real Ray, real Redis, real HTTP."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from actors.api import Hexbook
from actors.audit import audit
from actors.series import INFLIGHT_KEY, decode_series, encode_series, series_key
from engine.series import request_confirm
from tests.dates import ahead
from tests.gateway.test_api import SCHEDULE, assert_problem
from tests.polling import until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    # the index window follows the clock; the sweeper looks every half second
    return {"index_first_day": None, "index_days": 20, "series_sweep_seconds": 0.5}


FIRST = ahead(7)
OLD = {"birth_date": "1950-04-01", "postal_code": "60601"}  # 76
YOUNG = {"birth_date": "2001-04-01", "postal_code": "60601"}  # 25


def site(ops: httpx.Client, pid: str, service: str, lat: float, **over: Any) -> list[str]:
    body = {**SCHEDULE, "services": [service], "lat": lat, "first_day": f"{FIRST}", **over}
    r = ops.put(f"/v1/providers/{pid}", json=body)
    assert r.status_code in (200, 201), r.text
    slots = ops.get(f"/v1/providers/{pid}/slots", params={"service": service})
    assert slots.status_code == 200, slots.text
    return [s["start"] for s in slots.json()["slots"]]


def test_a_rule_refuses_at_hold_naming_itself_and_its_version(
    stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
    api: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    starts = site(ops, "elig-1", "flu", 41.86)
    r = ops.put("/v1/rules/flu", json={"ages": [{"min_years": 65}]})
    assert r.status_code == 201, r.text
    rule = r.json()
    assert (rule["rule"], rule["version"], rule["would_refuse"]) == ("flu", 1, [])
    hold = {"provider_id": "elig-1", "service": "flu", "start": starts[0]}
    refused = api.post("/v1/holds", json={**hold, "attestation": YOUNG})
    assert_problem(refused, 403, "not_eligible")
    body = refused.json()
    assert (body["rule"], body["rule_version"]) == ("flu", 1)
    assert body["reasons"] == [f"age 25 on {FIRST} is outside the bands 65+"]
    assert_problem(api.post("/v1/holds", json=hold), 403, "not_eligible")  # nothing attested
    ok = api.post("/v1/holds", json={**hold, "attestation": OLD})
    assert ok.status_code == 201, ok.text
    # nothing was taken by the refusals: 2 places, 1 held
    slots = api.get("/v1/providers/elig-1/slots", params={"service": "flu"}).json()["slots"]
    assert slots[0]["remaining"] == 1
    # bad input: a date that is no date, a cell that is no cell
    bad = {**hold, "attestation": {"birth_date": "1950-02-30"}}
    assert_problem(api.post("/v1/holds", json=bad), 422, "validation_error")
    bad = {**hold, "attestation": {"cell": "zz"}}
    assert_problem(api.post("/v1/holds", json=bad), 422, "validation_error")
    assert_problem(
        ops.put("/v1/rules/flu", json={"ages": [{"min_years": 70, "max_years": 60}]}),
        422,
        "validation_error",
    )
    assert_problem(api.put("/v1/rules/flu", json={}), 403, "forbidden")
    # what a patient attests is never logged (the requests above were logged)
    assert "/v1/holds" in caplog.text
    assert "1950-04-01" not in caplog.text and "2001-04-01" not in caplog.text


def test_a_rule_tightened_between_hold_and_confirm_refuses_the_confirm(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    starts = site(ops, "elig-2", "mmr", 41.84)
    assert ops.put("/v1/rules/mmr", json={"ages": [{"min_years": 60}]}).status_code == 201
    held = []
    for start in starts[:2]:
        r = api.post(
            "/v1/holds",
            json={"provider_id": "elig-2", "service": "mmr", "start": start, "attestation": OLD},
        )
        assert r.status_code == 201, r.text
        held.append(r.json()["hold_id"])
    first = api.post("/v1/bookings", json={"hold_id": held[0], "patient": {"reference": "p1"}})
    assert first.status_code == 201, first.text
    tighter = ops.put("/v1/rules/mmr", json={"ages": [{"min_years": 80}]})
    assert tighter.status_code == 201
    assert tighter.json()["version"] == 2
    # the booking made under version 1 is listed, not cancelled
    assert [b["booking_id"] for b in tighter.json()["would_refuse"]] == [first.json()["booking_id"]]
    token = first.json()["booking_token"]
    read = api.get(f"/v1/bookings/{first.json()['booking_id']}", headers={"X-Booking-Token": token})
    assert read.json()["status"] == "active"
    second = api.post("/v1/bookings", json={"hold_id": held[1], "patient": {"reference": "p2"}})
    assert_problem(second, 403, "not_eligible")
    assert second.json()["rule_version"] == 2
    history = ops.get("/v1/rules/mmr").json()
    assert [v["version"] for v in history] == [1, 2]
    report = audit(redis.Redis.from_url(stack[1].redis_url), keyring=stack[1].keyring)
    assert report.ok, report.summary()
    assert report.eligibility_checked >= 1


def test_a_series_is_held_and_booked_whole_and_cancelled_whole(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    starts = site(ops, "dose-1", "covid", 41.82, days=10)
    site(ops, "dose-2", "covid", 41.99, days=10)
    no_template = api.post(
        "/v1/series/holds", json={"provider_id": "dose-1", "service": "covid", "start": starts[0]}
    )
    assert_problem(no_template, 422, "validation_error")
    r = ops.put("/v1/series-templates/covid", json={"min_days": 3, "max_days": 5})
    assert r.status_code == 200, r.text
    held = api.post(
        "/v1/series/holds",
        json={
            "provider_id": "dose-1",
            "service": "covid",
            "start": starts[0],
            "second": {"provider_id": "dose-2"},
        },
        headers={"Idempotency-Key": "series-one"},
    )
    assert held.status_code == 201, held.text
    s = held.json()
    assert (s["state"], [d["provider_id"] for d in s["doses"]]) == ("held", ["dose-1", "dose-2"])
    first = date.fromisoformat(s["doses"][0]["start"][:10])
    assert date.fromisoformat(s["doses"][1]["start"][:10]) == first + timedelta(days=3)
    again = api.post(
        "/v1/series/holds",
        json={
            "provider_id": "dose-1",
            "service": "covid",
            "start": starts[0],
            "second": {"provider_id": "dose-2"},
        },
        headers={"Idempotency-Key": "series-one"},
    )
    assert again.json()["series_id"] == s["series_id"]
    contact = {"email": "pat7@example.org", "phone": None, "language": "es"}
    booked = api.post(
        "/v1/series/bookings",
        json={"series_id": s["series_id"], "patient": {"reference": "pat-7", "contact": contact}},
    )
    assert booked.status_code == 201, booked.text
    b = booked.json()
    assert b["state"] == "confirmed" and b["booking_token"]
    token = {"X-Booking-Token": b["booking_token"]}
    for d in b["doses"]:  # each dose is a booking, with the series' token and contact
        one = api.get(f"/v1/bookings/{d['booking_id']}", headers=token)
        assert one.status_code == 200 and one.json()["status"] == "active"
        assert one.json()["patient"]["contact"] == contact
    # The series record keeps the contact for its doses, sealed; an erasure drops it
    # there and from both bookings.
    _, hb, _ = stack
    raw = hb.redis.get(series_key(s["series_id"]))
    assert raw is not None and b"pat7@example.org" not in raw
    assert decode_series(raw, s["series_id"], hb.keyring).contact is not None
    erased = ops.post("/v1/erasures", json={"patient_ref": "pat-7"})
    assert erased.status_code == 200 and erased.json()["bookings_erased"] == 2, erased.text
    for d in b["doses"]:
        one = api.get(f"/v1/bookings/{d['booking_id']}", headers=token).json()
        assert one["status"] == "active" and "contact" not in one["patient"]
    raw = hb.redis.get(series_key(s["series_id"]))
    assert raw is not None
    assert decode_series(raw, s["series_id"], hb.keyring).contact is None
    assert api.get(f"/v1/series/{s['series_id']}").status_code == 404  # no token
    assert api.get(f"/v1/series/{s['series_id']}", headers=token).json()["state"] == "confirmed"
    assert api.delete(f"/v1/series/{s['series_id']}", headers=token).status_code == 204
    for d in b["doses"]:
        one = api.get(f"/v1/bookings/{d['booking_id']}", headers=token)
        assert one.json()["status"] == "cancelled"
    # the service's rule applies to a series too: checked at its holds
    assert ops.put("/v1/rules/covid", json={"ages": [{"min_years": 60}]}).status_code == 201
    young = api.post(
        "/v1/series/holds",
        json={
            "provider_id": "dose-1",
            "service": "covid",
            "start": starts[2],
            "attestation": YOUNG,
        },
    )
    assert_problem(young, 403, "not_eligible")
    assert young.json()["rule"] == "covid"
    old = api.post(
        "/v1/series/holds",
        json={"provider_id": "dose-1", "service": "covid", "start": starts[2], "attestation": OLD},
    )
    assert old.status_code == 201, old.text
    assert ops.put("/v1/rules/covid", json={"ages": [{"min_years": 90}]}).status_code == 201
    late = api.post(
        "/v1/series/bookings",
        json={"series_id": old.json()["series_id"], "patient": {"reference": "late"}},
    )
    assert_problem(late, 409, "series_aborted")  # refused at confirm: no dose booked
    assert "not_eligible" in late.json()["detail"] or "version 2" in late.json()["detail"]
    assert ops.put("/v1/rules/covid", json={}).status_code == 201  # everyone again
    outside = api.post(
        "/v1/series/holds",
        json={
            "provider_id": "dose-1",
            "service": "covid",
            "start": starts[0],
            "second": {"start": starts[1]},  # the same day: outside 3-5 days
        },
    )
    assert_problem(outside, 422, "validation_error")


def test_moving_dose_1_moves_dose_2_into_its_window_and_a_dose_cancels_its_series(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    starts = site(ops, "move-1", "tdap", 41.76, days=12)
    assert (
        ops.put("/v1/series-templates/tdap", json={"min_days": 3, "max_days": 4}).status_code == 200
    )
    held = api.post(
        "/v1/series/holds",
        json={"provider_id": "move-1", "service": "tdap", "start": starts[0]},
    ).json()
    s = api.post(
        "/v1/series/bookings",
        json={"series_id": held["series_id"], "patient": {"reference": "mover"}},
    ).json()
    token = {"X-Booking-Token": s["booking_token"]}
    day = lambda d: date.fromisoformat(d["start"][:10])  # noqa: E731
    assert [day(d) for d in s["doses"]] == [FIRST, FIRST + timedelta(days=3)]
    # dose 1 a day later: dose 2 (3 days after the old date) is still 2..3 days after...
    two_days_later = next(x for x in starts if x.startswith(f"{FIRST + timedelta(days=2)}"))
    moved = api.post(
        f"/v1/series/{s['series_id']}/reschedule",
        json={"dose": 1, "start": two_days_later},
        headers=token,
    )
    assert moved.status_code == 200, moved.text
    m = moved.json()
    assert m["state"] == "confirmed", m
    # ... no: 1 day after the new date, out of 3-4 days: dose 2 moved to 3 days after
    assert [day(d) for d in m["doses"]] == [
        FIRST + timedelta(days=2),
        FIRST + timedelta(days=5),
    ]
    for d in m["doses"]:
        b = api.get(f"/v1/bookings/{d['booking_id']}", headers=token).json()
        assert (b["status"], b["start"]) == ("active", d["start"])
    # dose 2 outside its window is refused, nothing moves
    far = next(x for x in starts if x.startswith(f"{FIRST + timedelta(days=11)}"))
    refused = api.post(
        f"/v1/series/{s['series_id']}/reschedule", json={"dose": 2, "start": far}, headers=token
    )
    assert_problem(refused, 422, "validation_error")
    # cancelling one dose through /v1/bookings cancels the series
    dose2 = m["doses"][1]["booking_id"]
    assert api.delete(f"/v1/bookings/{dose2}", headers=token).status_code == 204
    for d in m["doses"]:
        b = api.get(f"/v1/bookings/{d['booking_id']}", headers=token).json()
        assert b["status"] == "cancelled"
    assert api.get(f"/v1/series/{s['series_id']}", headers=token).json()["state"] == "cancelled"


def test_300_clients_racing_for_10_series_of_capacity_2_get_20_whole_series(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, keys: dict[str, str]
) -> None:
    url, hb, _ = stack
    # 09:00-11:30 with 2 places a slot: 10 slots a day, day 1 and day 2
    schedule = {
        "days": {
            d: [{"opens": "09:00", "closes": "11:30", "capacity": 2}]
            for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        }
    }
    starts = site(ops, "race-s", "hpv", 41.78, schedule=schedule, days=2)
    assert len(starts) == 20
    r = ops.put("/v1/series-templates/hpv", json={"min_days": 1, "max_days": 1})
    assert r.status_code == 200
    rng = random.Random(16)
    statuses: dict[str, int] = {}

    async def post(http: httpx.AsyncClient, path: str, body: Any, key: str) -> httpx.Response:
        """As a client should: a 503 is repeated with the same Idempotency-Key."""
        deadline = time.monotonic() + 60
        while (
            r := await http.post(path, json=body, headers={"Idempotency-Key": key})
        ).status_code == 503:
            statuses["503"] = statuses.get("503", 0) + 1
            assert time.monotonic() < deadline, f"{path} still unavailable"
        return r

    async def client(i: int, http: httpx.AsyncClient) -> str | None:
        k = rng.randrange(10)
        hold = {"provider_id": "race-s", "service": "hpv", "start": starts[k]}
        held = await post(http, "/v1/series/holds", hold, f"race-hold-{i}")
        if held.status_code != 201:
            assert held.status_code == 409, held.text
            return None
        sid = held.json()["series_id"]
        body = {"series_id": sid, "patient": {"reference": f"p{i}"}}
        booked = await post(http, "/v1/series/bookings", body, f"race-book-{i}")
        assert booked.status_code in (201, 409), booked.text
        return sid if booked.status_code == 201 else None

    async def race() -> list[str | None]:
        limits = httpx.Limits(max_connections=300)
        headers = {"Authorization": f"Bearer {keys['booking-client']}"}
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=120, limits=limits
        ) as http:
            return await asyncio.gather(*(client(i, http) for i in range(300)))

    won = [s for s in asyncio.run(race()) if s is not None]
    assert len(won) == 20
    grid = hb.slots("race-s", "hpv")
    booked = [b for b, c in zip(grid["booked"], grid["capacity"], strict=True) if c]
    assert booked == [2] * 20  # every place taken, by whole series only
    report = audit(redis.Redis.from_url(hb.redis_url), keyring=hb.keyring)
    assert report.ok, report.summary()
    assert report.series >= 20


def test_search_finds_the_sites_where_a_series_can_start(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    site(ops, "pair-a", "zoster", 40.70, days=1)
    site(ops, "pair-b", "zoster", 40.72, days=2, first_day=f"{FIRST + timedelta(days=2)}")
    assert (
        ops.put("/v1/series-templates/zoster", json={"min_days": 2, "max_days": 3}).status_code
        == 200
    )
    params: dict[str, Any] = {"lat": 40.70, "lng": -87.63, "service": "zoster", "radius_km": 5}

    def found(**extra: Any) -> dict[str, Any]:
        r = api.get("/v1/search", params={**params, **extra})
        assert r.status_code == 200, r.text
        return {x["provider_id"]: x for x in r.json()["results"]}

    until(lambda: set(found()) == {"pair-a", "pair-b"}, 30)  # the index follows the stream
    series = found(series="true")
    assert set(series) == {"pair-a"}  # pair-b's slots have no dose 2 two or three days on
    first = series["pair-a"]["next_slots"][0]
    assert first["start"].startswith(f"{FIRST}")
    assert first["second_dose"]["provider_id"] == "pair-b"
    assert first["second_dose"]["start"].startswith(f"{FIRST + timedelta(days=2)}")
    one_site = ops.put(
        "/v1/series-templates/zoster", json={"min_days": 2, "max_days": 3, "same_provider": True}
    )
    assert one_site.status_code == 200
    assert found(series="true") == {}
    assert_problem(
        api.get("/v1/search", params={**params, "service": "none", "series": "true"}),
        422,
        "validation_error",
    )


def test_the_gateway_finishes_a_series_a_client_left_half_way(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    hb = stack[1]
    starts = site(ops, "left-1", "polio", 41.74, days=6)
    assert (
        ops.put("/v1/series-templates/polio", json={"min_days": 2, "max_days": 3}).status_code
        == 200
    )
    held = api.post(
        "/v1/series/holds", json={"provider_id": "left-1", "service": "polio", "start": starts[0]}
    ).json()
    # The client's gateway decided to confirm and died before any step: the record says
    # "confirming" and sits in the in-flight set, as SeriesBook leaves it.
    client = redis.Redis.from_url(hb.redis_url)
    raw = client.get(series_key(held["series_id"]))
    rec = decode_series(raw, held["series_id"], hb.keyring)  # type: ignore[arg-type]
    client.set(
        series_key(rec.series_id),
        encode_series(request_confirm(rec, "gone", b"digest"), hb.keyring),
    )
    client.zadd(INFLIGHT_KEY, {rec.series_id: hb.clock.seconds() - 60})
    until(lambda: ops.get(f"/v1/series/{rec.series_id}").json()["state"] == "confirmed", 30)
    for d in rec.doses:
        assert hb.booking(d.provider_id, "polio", d.booking_id).status == "active"
    assert client.zscore(INFLIGHT_KEY, rec.series_id) is None
