"""The v1 API over real HTTP against a running stack (real Ray, real redis-server)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors import journal
from actors.api import Hexbook
from tests.dates import dst_saturday

PROBLEM = "application/problem+json"
# The next weekend on which Chicago moves its clocks forward: Saturday is CST, Sunday CDT.
D1 = dst_saturday()
D2 = D1 + timedelta(days=1)
SCHEDULE = {
    "name": "Clinic",
    "lat": 41.88,
    "lng": -87.63,
    "timezone": "America/Chicago",
    "services": ["vaccine"],
    "languages": ["en", "es"],
    "schedule": {
        "days": {
            d: [{"opens": "09:00", "closes": "12:00", "capacity": 2}]
            for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        }
    },
    "first_day": f"{D1}",
    "days": 2,
}


def slots(api: httpx.Client, pid: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/providers/{pid}/slots", params={"service": "vaccine"})
    assert r.status_code == 200, r.text
    return list(r.json()["slots"])


def assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["detail"]


def test_health_and_ready(base: str, api: httpx.Client) -> None:
    assert api.get(f"{base}/healthz").json() == {"status": "ok"}
    r = api.get(f"{base}/readyz")
    assert r.status_code == 200
    assert r.json()["shards"] == 2


def test_provider_and_slots_in_local_time(base: str, api: httpx.Client) -> None:
    p = api.get(f"{base}/v1/providers/clinic-1").json()
    assert (p["timezone"], p["languages"]) == ("America/Chicago", ["en", "es"])
    grid = slots(api, "clinic-1")
    # The Saturday is CST (-06:00), the Sunday after 02:00 is CDT (-05:00).
    assert grid[0]["start"] == f"{D1}T09:00:00-06:00"
    assert grid[12]["start"] == f"{D2}T09:00:00-05:00"
    assert len(grid) == 24
    assert all(s["remaining"] == 2 for s in grid)
    window = api.get(
        f"{base}/v1/providers/clinic-1/slots",
        params={"service": "vaccine", "from": f"{D2}T00:00:00-06:00"},
    )
    assert len(window.json()["slots"]) == 12


def test_hold_book_read_reschedule_cancel(base: str, api: httpx.Client) -> None:
    grid = slots(api, "clinic-1")
    r = api.post(
        f"{base}/v1/holds",
        json={"provider_id": "clinic-1", "service": "vaccine", "start": grid[1]["start"]},
    )
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["start"] == grid[1]["start"]
    assert hold["expires_at"].endswith("-06:00") or hold["expires_at"].endswith("-05:00")
    r = api.post(
        f"{base}/v1/bookings", json={"hold_id": hold["hold_id"], "patient": {"reference": "ref-1"}}
    )
    assert r.status_code == 201, r.text
    booking = r.json()
    token = booking["booking_token"]
    assert len(token) >= 22
    headers = {"X-Booking-Token": token}
    got = api.get(f"{base}/v1/bookings/{booking['booking_id']}", headers=headers).json()
    assert (got["status"], got["patient"]["reference"], got["booking_token"]) == (
        "active",
        "ref-1",
        None,
    )
    # Without the token, or with a wrong one: not found (nothing learnt).
    assert_problem(api.get(f"{base}/v1/bookings/{booking['booking_id']}"), 404, "booking_not_found")
    assert_problem(
        api.get(
            f"{base}/v1/bookings/{booking['booking_id']}", headers={"X-Booking-Token": "x" * 22}
        ),
        404,
        "booking_not_found",
    )
    r = api.post(
        f"{base}/v1/bookings/{booking['booking_id']}/reschedule",
        headers=headers,
        json={"provider_id": "clinic-1", "service": "vaccine", "start": grid[2]["start"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["start"] == grid[2]["start"]
    after = slots(api, "clinic-1")
    assert (after[1]["remaining"], after[2]["remaining"]) == (2, 1)
    # Across providers (another shard, maybe): the old place is freed when the new is booked.
    target = slots(api, "clinic-2")[0]["start"]
    r = api.post(
        f"{base}/v1/bookings/{booking['booking_id']}/reschedule",
        headers=headers,
        json={"provider_id": "clinic-2", "service": "vaccine", "start": target},
    )
    assert r.status_code == 200, r.text
    moved = r.json()
    assert (moved["provider_id"], moved["start"]) == ("clinic-2", target)
    # A new id at the other calendar, and the patient's token still works for it.
    assert moved["booking_id"] != booking["booking_id"] and moved["booking_token"] == token
    again = api.get(f"{base}/v1/bookings/{moved['booking_id']}", headers=headers)
    assert again.status_code == 200 and again.json()["start"] == target
    assert slots(api, "clinic-1")[2]["remaining"] == 2
    assert slots(api, "clinic-2")[0]["remaining"] == 1
    # The old booking is cancelled; cancelling it again is a conflict.
    r = api.delete(f"{base}/v1/bookings/{booking['booking_id']}", headers=headers)
    assert_problem(r, 409, "booking_not_active")


def test_schedule_change_never_drops_bookings(
    base: str, api: httpx.Client, ops: httpx.Client
) -> None:
    start = slots(api, "clinic-2")[10]["start"]
    hold = api.post(
        f"{base}/v1/holds", json={"provider_id": "clinic-2", "service": "vaccine", "start": start}
    ).json()
    r = ops.put(f"{base}/v1/providers/clinic-2", json={**SCHEDULE, "lat": 41.95}, timeout=60)
    assert_problem(r, 409, "schedule_conflict")
    assert slots(api, "clinic-2")[10]["remaining"] == 1  # the hold is still there
    api.delete(f"{base}/v1/holds/{hold['hold_id']}")


def test_release_hold_and_expired_codes(base: str, api: httpx.Client) -> None:
    start = slots(api, "clinic-1")[5]["start"]
    hold = api.post(
        f"{base}/v1/holds", json={"provider_id": "clinic-1", "service": "vaccine", "start": start}
    ).json()
    assert api.delete(f"{base}/v1/holds/{hold['hold_id']}").status_code == 204
    assert slots(api, "clinic-1")[5]["remaining"] == 2
    r = api.post(
        f"{base}/v1/bookings", json={"hold_id": hold["hold_id"], "patient": {"reference": "r"}}
    )
    assert_problem(r, 404, "hold_not_found")
    assert_problem(api.delete(f"{base}/v1/holds/{hold['hold_id']}"), 404, "hold_not_found")


def test_same_idempotency_key_books_once(base: str, api: httpx.Client) -> None:
    start = slots(api, "clinic-2")[6]["start"]
    body = {"provider_id": "clinic-2", "service": "vaccine", "start": start}
    key = {"Idempotency-Key": "retry-after-timeout-1"}
    first = api.post(f"{base}/v1/holds", json=body, headers=key)
    again = api.post(f"{base}/v1/holds", json=body, headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json()["hold_id"] == again.json()["hold_id"]
    assert slots(api, "clinic-2")[6]["remaining"] == 1
    bkey = {"Idempotency-Key": "retry-after-timeout-2"}
    bbody = {"hold_id": first.json()["hold_id"], "patient": {"reference": "r"}}
    b1 = api.post(f"{base}/v1/bookings", json=bbody, headers=bkey)
    b2 = api.post(f"{base}/v1/bookings", json=bbody, headers=bkey)
    assert b1.json()["booking_id"] == b2.json()["booking_id"]
    # The repeat is the first answer again, token included (defect 3 of the contract issue).
    assert b1.json()["booking_token"] and b2.json() == b1.json()
    assert slots(api, "clinic-2")[6]["remaining"] == 1
    # The same key with another body is a 422.
    other = {**body, "start": slots(api, "clinic-2")[7]["start"]}
    assert_problem(
        api.post(f"{base}/v1/holds", json=other, headers=key), 422, "idempotency_conflict"
    )


def remembered(hb: Hexbook, pid: str) -> list[str]:
    """The idempotency keys the calendar of ``pid`` remembers (its shard's state)."""
    state = journal.decode_shard_snapshot(hb._call(hb.shard_of(pid), "committed_state"))
    (cal,) = [c for c in state.calendars if (c.provider_id, c.service) == (pid, "vaccine")]
    return sorted(e.key for e in cal.idempotency)


def test_only_a_key_the_client_can_repeat_is_remembered(
    base: str, stack: tuple[str, Hexbook, FastAPI], api: httpx.Client
) -> None:
    _, hb, _ = stack
    before = remembered(hb, "clinic-2")
    start = slots(api, "clinic-2")[8]["start"]
    body = {"provider_id": "clinic-2", "service": "vaccine", "start": start}
    hold = api.post(f"{base}/v1/holds", json=body)
    assert hold.status_code == 201, hold.text
    booked = {"hold_id": hold.json()["hold_id"], "patient": {"reference": "no-key"}}
    assert api.post(f"{base}/v1/bookings", json=booked).status_code == 201
    assert remembered(hb, "clinic-2") == before  # nobody can send those again
    keyed = api.post(f"{base}/v1/holds", json=body, headers={"Idempotency-Key": "kept-1"})
    assert keyed.status_code == 201, keyed.text
    now = remembered(hb, "clinic-2")
    assert len(now) == len(before) + 1 and any(k.endswith(":kept-1") for k in now)


def test_the_race_for_ten_slots(
    base: str, stack: tuple[str, Hexbook, FastAPI], api: httpx.Client
) -> None:
    """300 clients try to hold and book the same 10 slots of capacity 2."""
    wanted = [s["start"] for s in slots(api, "race")[:10]]

    async def client(i: int, http: httpx.AsyncClient) -> tuple[int, int]:
        r = await http.post(
            "/v1/holds", json={"provider_id": "race", "service": "vaccine", "start": wanted[i % 10]}
        )
        if r.status_code != 201:
            return r.status_code, 0
        b = await http.post(
            "/v1/bookings", json={"hold_id": r.json()["hold_id"], "patient": {"reference": f"p{i}"}}
        )
        return r.status_code, b.status_code

    async def run() -> list[tuple[int, int]]:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(
            base_url=base, limits=limits, timeout=60, headers=api.headers
        ) as http:
            return await asyncio.gather(*(client(i, http) for i in range(300)))

    results = asyncio.run(run())
    holds = Counter(h for h, _ in results)
    booked = Counter(b for _, b in results if b)
    assert holds == {201: 20, 409: 280}, holds
    assert booked == {201: 20}, booked
    assert all(s["remaining"] == 0 for s in slots(api, "race")[:10])
    # Concurrent requests for the shard left in shared actor calls.
    sizes = stack[2].state.runtime.service.router.batch_sizes
    assert max(sizes) > 1, sizes


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "post",
            "/v1/holds",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/holds",
            {"json": {"provider_id": "clinic-1", "service": "vaccine", "start": 5}},
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/holds",
            {
                "json": {
                    "provider_id": "clinic-1",
                    "service": "vaccine",
                    "start": f"{D1}T09:00:00",
                }
            },
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/holds",
            {
                "json": {
                    "provider_id": "nobody",
                    "service": "vaccine",
                    "start": f"{D1}T09:00:00-06:00",
                }
            },
            404,
            "provider_not_found",
        ),
        (
            "post",
            "/v1/holds",
            {
                "json": {
                    "provider_id": "clinic-1",
                    "service": "dentist",
                    "start": f"{D1}T09:00:00-06:00",
                }
            },
            404,
            "calendar_not_found",
        ),
        (
            "post",
            "/v1/holds",
            {
                "json": {
                    "provider_id": "clinic-1",
                    "service": "vaccine",
                    "start": f"{D1}T09:07:00-06:00",
                }
            },
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/holds",
            {
                "json": {
                    "provider_id": "clinic-1",
                    "service": "vaccine",
                    "start": f"{D1}T09:00:00-06:00",
                    "party_size": 0,
                }
            },
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/holds",
            {"content": b"x" * 9000, "headers": {"content-type": "application/json"}},
            413,
            "body_too_large",
        ),
        ("put", "/v1/providers/far", {"json": {**SCHEDULE, "lat": 123.0}}, 422, "validation_error"),
        (
            "put",
            "/v1/providers/bad",
            {"json": {**SCHEDULE, "timezone": "Chicago"}},
            422,
            "validation_error",
        ),
        ("put", "/v1/providers/bad!id", {"json": SCHEDULE}, 422, "validation_error"),
        (
            "post",
            "/v1/bookings",
            {"json": {"hold_id": "not-a-hexbook-hold-id-at-all", "patient": {"reference": "r"}}},
            422,
            "validation_error",
        ),
        ("delete", "/v1/holds/garbage", {}, 422, "validation_error"),
        ("get", "/v1/providers/nobody", {}, 404, "provider_not_found"),
        ("get", "/v1/nothing-here", {}, 404, "not_found"),
    ],
)
def test_bad_input_is_a_problem_never_a_500(
    base: str,
    ops: httpx.Client,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    r = getattr(ops, method)(f"{base}{path}", **kwargs)
    assert_problem(r, status, code)


def test_openapi_documents_the_paths(base: str, api: httpx.Client) -> None:
    doc = api.get(f"{base}/openapi.json").json()
    for path in (
        "/v1/holds",
        "/v1/bookings",
        "/v1/bookings/{booking_id}",
        "/v1/providers/{provider_id}",
        "/v1/providers/{provider_id}/slots",
        "/v1/holds/{hold_id}",
        "/v1/bookings/{booking_id}/reschedule",
    ):
        assert path in doc["paths"], path
