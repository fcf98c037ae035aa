"""Launch-day waiting rooms through the HTTP API (issue 15), on a real stack: the
pre-queue's lottery is a permutation recorded with its seed; nobody is admitted to an
area with nothing left, and those waiting for it are told at once; a hold in the room's
area without a valid admission is refused while the room is active; one visitor cannot
hold two places in the queue; a second gateway, or a restarted one, sees every position.
Real Ray, real Redis, real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from engine.room import lottery
from gateway.app import create_app
from gateway.keys import KeyStore
from gateway.room import room_key
from gateway.settings import Settings
from tests.dates import ahead
from tests.gateway.conftest import serving
from tests.gateway.test_api import SCHEDULE, assert_problem
from tests.polling import until

pytestmark = pytest.mark.integration

FIRST = ahead(7)
SMALL = {  # two places: 09:00 and 09:15, one each
    **SCHEDULE,
    "first_day": f"{FIRST}",
    "days": 1,
    "horizon_days": 0,
    "schedule": {
        "days": {
            d: [{"opens": "09:00", "closes": "09:30", "capacity": 1}]
            for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        }
    },
}


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"index_first_day": None, "index_days": 20, "room_tick_seconds": 0.2}


def instant(hb: Hexbook, seconds_from_now: float) -> str:
    return datetime.fromtimestamp(hb.clock.seconds() + seconds_from_now, UTC).isoformat()


def site(ops: httpx.Client, pid: str, service: str, lat: float, lng: float) -> list[str]:
    body = {**SMALL, "services": [service], "lat": lat, "lng": lng}
    r = ops.put(f"/v1/providers/{pid}", json=body)
    assert r.status_code in (200, 201), r.text
    slots = ops.get(f"/v1/providers/{pid}/slots", params={"service": service}).json()["slots"]
    return [s["start"] for s in slots]


def room(ops: httpx.Client, hb: Hexbook, rid: str, service: str, **over: Any) -> dict[str, Any]:
    body = {"room_id": rid, "service": service, "lat": 41.88, "lng": -87.63, "radius_km": 30,
            "opens_at": instant(hb, 0), "per_minute": 6000, "near_km": 5, "one_per": ["visitor"],
            **over}  # fmt: skip
    r = ops.post("/v1/rooms", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def ticks(hb: Hexbook, rid: str, seconds: float = 1.0) -> None:
    """Wait until the room's admitting gateway has ticked on for ``seconds`` of the
    stack's clock (each tick stamps the room), however slow the machine is."""

    def last() -> float:
        raw = hb.redis.hget(room_key(rid), "last")
        return float(raw) if raw else 0.0

    first = until(last)
    until(lambda: last() >= first + seconds)


def view(client: httpx.Client, rid: str, vid: str) -> dict[str, Any]:
    r = client.get(f"/v1/rooms/{rid}/visitors/{vid}")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"].startswith("private, max-age=")
    return dict(r.json())


def join(client: httpx.Client, rid: str, vid: str, lat: float = 41.88, lng: float = -87.63) -> Any:
    return client.post(
        f"/v1/rooms/{rid}/visitors", json={"visitor_id": vid, "lat": lat, "lng": lng}
    )


def test_the_pre_queue_is_ordered_by_a_lottery_kept_with_its_seed(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    _, hb, _ = stack
    site(ops, "room-lot", "lot", 41.88, -87.63)
    made = room(ops, hb, "lot", "lot", opens_at=instant(hb, 4), per_minute=1, seed=1234)
    assert (made["state"], made["drawn"], made["seed"]) == ("scheduled", False, None)
    people = [f"p{i:02d}" for i in range(30)]
    for p in people:
        r = join(api, "lot", p)
        assert r.status_code == 201, r.text
        assert (r.json()["status"], r.json()["position"]) == ("pre-queue", None)
    assert join(api, "lot", "p00").status_code == 200  # the same visitor keeps its place
    until(lambda: ops.get("/v1/rooms/lot").json()["drawn"], 30)
    draw = ops.get("/v1/rooms/lot/lottery").json()
    assert draw["seed"] == 1234
    assert sorted(draw["order"]) == people  # a permutation of the entrants
    assert draw["order"] == lottery(1234, people)  # drawn again from the seed
    assert draw["order"] != people
    # positions follow the draw (the first admitted at once at 1 a minute: the tick
    # that drew admits right after, so the test waits for that tick's end)
    until(lambda: ops.get("/v1/rooms/lot").json()["admitted"] == 1, 30)
    first = view(api, "lot", draw["order"][0])
    assert first["status"] == "admitted"
    positions = [view(api, "lot", v)["position"] for v in draw["order"][1:]]
    assert positions == list(range(1, 30))
    late = join(api, "lot", "late")
    assert late.status_code == 201
    assert (late.json()["status"], late.json()["position"]) == ("waiting", 30)
    assert late.json()["estimated_wait_seconds"] >= 29 * 60


def test_nobody_is_admitted_where_nothing_is_left_and_they_are_told_at_once(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client
) -> None:
    _, hb, _ = stack
    starts = site(ops, "room-near", "sell", 41.88, -87.63)  # 2 places
    assert len(starts) == 2
    room(ops, hb, "sell", "sell", opens_at=instant(hb, 3), margin=1)
    # 5 people near the site, then 3 far from any place (queued behind them)
    for i in range(5):
        assert join(api, "sell", f"near{i}").status_code == 201
    for i in range(3):
        assert join(api, "sell", f"far{i}", lat=41.70, lng=-87.90).status_code == 201
    until(lambda: ops.get("/v1/rooms/sell").json()["drawn"], 30)
    until(lambda: ops.get("/v1/rooms/sell").json()["admitted"] == 3, 30)
    for i in range(3):  # told at once, though behind everyone
        v = until(lambda i=i: (x := view(api, "sell", f"far{i}"))["status"] == "sold_out" and x)
        assert v["places_near"] == 0 and "waitlist" in v["message"]
    views = [view(api, "sell", f"near{i}") for i in range(5)]
    admitted = [v for v in views if v["status"] == "admitted"]
    assert len(admitted) == 3  # two places plus the margin of one, no more
    waiting = [v for v in views if v["status"] == "waiting"]
    assert [v["position"] for v in sorted(waiting, key=lambda v: v["position"])] == [1, 2]
    assert all(v["places_near"] == 2 for v in waiting)
    ticks(hb, "sell")  # several ticks: still nobody more (each admitted holds nothing yet)
    assert ops.get("/v1/rooms/sell").json()["admitted"] == 3
    # the admitted hold the two places: the area is sold out, the rest are told
    held = 0
    for v in admitted:
        for start in starts:
            body = {"provider_id": "room-near", "service": "sell", "start": start,
                    "admission": v["admission"]}  # fmt: skip
            r = api.post("/v1/holds", json=body)
            if r.status_code == 201:
                held += 1
                break
            assert_problem(r, 409, "slot_unavailable")
    assert held == 2
    for v in waiting:
        until(lambda v=v: view(api, "sell", v["visitor_id"])["status"] == "sold_out")
    got = ops.get("/v1/rooms/sell").json()
    assert (got["admitted"], got["holding"], got["sold_out"]) == (3, 2, 5)
    assert got["sold_out_areas"]
    metrics = ops.get("/metrics").text
    assert 'hexbook_room_sold_out{room="sell"} 5.0' in metrics
    assert 'hexbook_room_holding{room="sell"} 2.0' in metrics
    # joining a sold-out area: told at once
    late = join(api, "sell", "late")
    assert late.json()["status"] == "sold_out"


def test_holds_in_the_area_need_a_valid_admission_while_the_room_is_active(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client, keys: dict[str, str]
) -> None:
    url, hb, _ = stack
    starts = site(ops, "room-gate", "gate", 41.88, -87.63)
    outside = site(ops, "room-outside", "gate", 43.00, -89.00)  # 140 km away
    room(ops, hb, "gate", "gate", opens_at=instant(hb, 0))
    hold = {"provider_id": "room-gate", "service": "gate", "start": starts[0]}
    until(lambda: api.post("/v1/holds", json=hold).status_code == 403, 10)
    refused = api.post("/v1/holds", json=hold)
    assert_problem(refused, 403, "admission_required")
    assert refused.json()["room"] == "gate"
    far = {"provider_id": "room-outside", "service": "gate", "start": outside[0]}
    assert api.post("/v1/holds", json=far).status_code == 201  # outside the area: open
    assert join(api, "gate", "me").status_code == 201
    me = until(lambda: (v := view(api, "gate", "me"))["status"] == "admitted" and v)
    token = me["admission"]
    # forged, foreign, or for another caller: refused
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_problem(api.post("/v1/holds", json={**hold, "admission": forged}), 403,
                   "admission_required")  # fmt: skip
    other_key = KeyStore(hb.redis).create("booking-client", "someone else")[0]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        assert view(other, "gate", "me")["admission"] is None  # not shown to others
        stolen = other.post("/v1/holds", json={**hold, "admission": token})
        assert_problem(stolen, 403, "admission_required")
        assert "another caller" in stolen.json()["detail"]
    # the visitor's own: one hold; the same request repeated answers the same
    key = {"Idempotency-Key": "room-gate-1"}
    first = api.post("/v1/holds", json={**hold, "admission": token}, headers=key)
    assert first.status_code == 201, first.text
    again = api.post("/v1/holds", json={**hold, "admission": token}, headers=key)
    assert again.status_code == 201 and again.json()["hold_id"] == first.json()["hold_id"]
    second = {**hold, "start": starts[1], "admission": token}
    assert_problem(api.post("/v1/holds", json=second), 409, "admission_spent")
    assert view(api, "gate", "me")["status"] == "holding"
    # bad input is a 422, never a 500
    assert_problem(api.post("/v1/holds", json={**hold, "admission": "x"}), 422,
                   "validation_error")  # fmt: skip
    # closed: holds need nothing any more
    assert ops.patch("/v1/rooms/gate", json={"state": "closed"}).json()["state"] == "closed"
    until(lambda: api.post("/v1/holds", json=second).status_code == 201, 10)
    assert_problem(join(api, "gate", "newcomer"), 409, "room_closed")


def test_one_place_per_visitor_key_and_address(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client, keys: dict[str, str]
) -> None:
    url, hb, _ = stack
    site(ops, "room-dedup", "dedup", 41.88, -87.63)
    room(ops, hb, "dedup", "dedup", opens_at=instant(hb, 3600), one_per=["visitor", "key"])
    assert join(api, "dedup", "alice").status_code == 201
    assert_problem(join(api, "dedup", "bob"), 409, "already_queued")  # the same key
    other_key = KeyStore(hb.redis).create("booking-client", "other")[0]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        taken = join(other, "dedup", "alice")  # someone else's visitor id
        assert_problem(taken, 409, "already_queued")
        assert "visitor id" in taken.json()["detail"]
        assert join(other, "dedup", "carol").status_code == 201
    room(ops, hb, "by-address", "dedup", opens_at=instant(hb, 3600), one_per=["address"])
    with httpx.Client(base_url=url) as anonymous:  # a browser: no key, one address
        assert join(anonymous, "by-address", "dave").status_code == 201
        assert_problem(join(anonymous, "by-address", "erin"), 409, "already_queued")
    # bad input: a clear 4xx
    assert_problem(join(api, "nope", "x"), 404, "room_not_found")
    bad = api.post("/v1/rooms/dedup/visitors", json={"lat": 95, "lng": 0})
    assert_problem(bad, 422, "validation_error")
    assert_problem(ops.post("/v1/rooms", json={"room_id": "dedup"}), 422, "validation_error")
    dup = {"room_id": "dedup", "service": "dedup", "lat": 41.88, "lng": -87.63,
           "radius_km": 5, "opens_at": instant(hb, 10), "per_minute": 10}  # fmt: skip
    assert_problem(ops.post("/v1/rooms", json=dup), 409, "room_exists")
    assert_problem(api.post("/v1/rooms", json=dup), 403, "forbidden")  # operators only


def test_a_second_or_restarted_gateway_sees_every_position(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, api: httpx.Client, keys: dict[str, str]
) -> None:
    _, hb, _ = stack
    site(ops, "room-two", "two", 41.88, -87.63)
    room(ops, hb, "two", "two", opens_at=instant(hb, 2), per_minute=1, margin=20)
    for i in range(12):
        assert join(api, "two", f"v{i}").status_code == 201
    until(lambda: ops.get("/v1/rooms/two").json()["drawn"], 30)
    # the tick that drew admits the first at once (then one a minute): wait for it, so
    # nobody moves while the two gateways are compared
    until(lambda: ops.get("/v1/rooms/two").json()["admitted"] == 1, 30)
    before = {f"v{i}": view(api, "two", f"v{i}") for i in range(12)}
    settings = Settings(redis_url=hb.redis_url, index_first_day=None, index_days=20,
                        room_tick_seconds=0.2)  # fmt: skip
    with (
        serving(create_app(settings, hexbook=hb)) as url2,
        httpx.Client(
            base_url=url2, headers={"Authorization": f"Bearer {keys['booking-client']}"}
        ) as api2,
    ):
        for vid, seen in before.items():
            there = view(api2, "two", vid)
            assert (there["status"], there["position"]) == (seen["status"], seen["position"])
        # a join at the second gateway queues behind everyone, seen at the first
        assert join(api2, "two", "v12").status_code == 201
    # the second gateway stopped (it may have held the room's lock): nothing moved
    assert view(api, "two", "v12")["position"] == 12
    for vid, seen in before.items():
        assert view(api, "two", vid)["position"] == seen["position"]
    # and the room still admits (faster now), pauses and resumes
    assert ops.patch("/v1/rooms/two", json={"per_minute": 600}).json()["per_minute"] == 600
    until(lambda: ops.get("/v1/rooms/two").json()["admitted"] >= 3, 30)
    paused = ops.patch("/v1/rooms/two", json={"state": "paused"}).json()
    assert paused["state"] == "paused" and paused["rate_per_minute"] == 0
    n = ops.get("/v1/rooms/two").json()["admitted"]
    ticks(hb, "two")  # several ticks of a paused room: nobody admitted
    assert ops.get("/v1/rooms/two").json()["admitted"] == n
    assert ops.patch("/v1/rooms/two", json={"state": "open"}).json()["state"] == "open"
    until(lambda: ops.get("/v1/rooms/two").json()["admitted"] > n, 30)
