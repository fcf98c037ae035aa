"""The fast path (gateway/fast.py): well-formed holds, bookings and searches are served
without FastAPI's machinery, with the same answers; everything else reaches FastAPI
untouched and is answered as before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.fast import FastPath
from tests.gateway.test_api import D1, assert_problem, slots

pytestmark = pytest.mark.integration


def _fast_path(app: FastAPI) -> FastPath:
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, FastPath):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, FastPath), "the fast path is not in the middleware stack"
    return layer


@pytest.fixture
def fast(stack: tuple[str, Any, FastAPI], base: str) -> Iterator[FastPath]:
    path = _fast_path(stack[2])
    handlers = dict(path.handlers)
    yield path
    path.handlers = handlers


def _hold(api: httpx.Client, start: str, **extra: Any) -> httpx.Response:
    body = {"provider_id": "clinic-2", "service": "vaccine", "start": start, **extra}
    return api.post("/v1/holds", json=body)


def test_well_formed_requests_take_the_fast_path_and_others_reach_fastapi(
    fast: FastPath, api: httpx.Client, base: str
) -> None:
    free = [s["start"] for s in slots(api, "clinic-2") if s["remaining"] == 2]
    before = fast.served
    hold = _hold(api, free[0])
    assert hold.status_code == 201 and fast.served == before + 1
    booked = api.post(
        "/v1/bookings", json={"hold_id": hold.json()["hold_id"], "patient": {"reference": "f"}}
    )
    assert booked.status_code == 201 and fast.served == before + 2
    assert booked.json()["booking_token"] and booked.json()["patient"] == {"reference": "f"}
    found = httpx.get(
        f"{base}/v1/search",
        params={"lat": 41.95, "lng": -87.63, "service": "vaccine", "from": f"{D1}T00:00:00Z"},
    )
    assert found.status_code == 200 and fast.served == before + 3

    # Not for the fast path: FastAPI answers, as it always did.
    served = fast.served
    assert_problem(_hold(api, free[1], party_size="2"), 422, "validation_error")
    assert_problem(_hold(api, free[1], extra=1), 422, "validation_error")
    assert_problem(_hold(api, free[1] + "\n"), 422, "validation_error")  # ours: not RFC 3339
    bad_id = {"provider_id": "clinic-2\n", "service": "vaccine", "start": free[1]}
    assert_problem(api.post("/v1/holds", json=bad_id), 422, "validation_error")
    assert_problem(
        api.post("/v1/holds", content=b"{", headers={"Content-Type": "application/json"}),
        422,
        "validation_error",
    )
    no_key = httpx.post(f"{base}/v1/holds", json={"provider_id": "x", "service": "y", "start": ""})
    assert_problem(no_key, 401, "unauthorized")
    far = httpx.get(f"{base}/v1/search", params={"lat": 100, "lng": 0, "service": "vaccine"})
    assert_problem(far, 422, "validation_error")
    assert fast.served == served  # every malformed request was answered by FastAPI
    # Domain errors on the fast path are the same problems: 409 for a slot taken twice.
    again = _hold(api, free[0], party_size=2)
    assert_problem(again, 409, "slot_unavailable")


def test_fast_path_and_fastapi_give_the_same_answers(
    fast: FastPath, api: httpx.Client, base: str
) -> None:
    free = [s["start"] for s in slots(api, "clinic-2") if s["remaining"] == 2]
    params = {
        "lat": 41.95, "lng": -87.64, "service": "vaccine", "radius_km": 20, "limit": 3,
        "language": ["es"], "order": "earliest", "from": f"{D1}T08:00:00-06:00",
    }  # fmt: skip

    def answers(key: str) -> list[Any]:
        search = httpx.get(f"{base}/v1/search", params=params).json()
        search.pop("index")
        hold = _hold(api, free.pop(), party_size=2)
        booking = api.post(
            "/v1/bookings",
            json={"hold_id": hold.json()["hold_id"], "patient": {"reference": key}},
            headers={"Idempotency-Key": key},
        )
        repeat = api.post(
            "/v1/bookings",
            json={"hold_id": hold.json()["hold_id"], "patient": {"reference": key}},
            headers={"Idempotency-Key": key},
        )
        full = _hold(api, hold.json()["start"])
        out = [search, hold.status_code, booking.status_code, repeat.status_code]
        token = booking.json()["booking_token"]
        out += [
            sorted(hold.json()),
            sorted(booking.json()),
            repeat.json()["booking_token"] == token,
        ]
        out += [repeat.json()["booking_id"] == booking.json()["booking_id"]]
        out += [full.status_code, full.json()["code"], full.headers["content-type"]]
        return out

    served = fast.served
    fast_answers = answers("k-fast")
    assert fast.served > served
    fast.handlers = {}  # every request through FastAPI now
    served = fast.served
    slow_answers = answers("k-slow")
    assert fast.served == served
    assert fast_answers == slow_answers
    assert fast_answers[0]["results"], "the search found nothing to compare"
