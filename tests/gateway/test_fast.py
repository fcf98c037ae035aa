"""The fast path (gateway/fast.py): well-formed holds, bookings and searches are served
without FastAPI's machinery, with the same answers; everything else reaches FastAPI
untouched and is answered as before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.fast import FastPath
from gateway.settings import Settings
from tests.gateway.conftest import serving
from tests.gateway.test_api import D1, assert_problem, slots

pytestmark = pytest.mark.integration


def _fast_path(app: FastAPI) -> FastPath:
    layer = getattr(app, "fast", None)
    assert isinstance(layer, FastPath), "the fast path is not in front of the app"
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


# --- the same inputs through both ways in ---------------------------------------------


@pytest.fixture(scope="module")
def slow(stack: tuple[str, Any, FastAPI], base: str) -> Iterator[str]:
    """A second gateway on the same shards with the fast path off: every request goes
    through FastAPI."""
    _, hb, app = stack
    settings = Settings(**{**app.state.runtime.settings.model_dump(), "fast_path": False})
    with serving(create_app(settings, hexbook=hb)) as slow_url:
        yield slow_url


def _odd_requests(api: httpx.Client, keys: dict[str, str]) -> list[dict[str, Any]]:
    free = [s["start"] for s in slots(api, "clinic-2") if s["remaining"] == 2]
    ok = {"provider_id": "clinic-2", "service": "vaccine", "start": free[-1]}
    client = {"Authorization": f"Bearer {keys['booking-client']}"}
    admin = {"Authorization": f"Bearer {keys['provider-admin']}"}
    js = {"Content-Type": "application/json"}
    hold_id = "Y2xpbmljLTIvdmFjY2luZQ." + "A" * 22  # clinic-2/vaccine, never issued
    holds: list[tuple[Any, dict[str, str] | list[tuple[str, str]]]] = [
        (b"{", {**client, **js}),
        (b"[]", {**client, **js}),
        (b"", {**client, **js}),
        (b'{"provider_id": ' + b"[" * 3000 + b"]" * 3000 + b"}", {**client, **js}),
        ({**ok, "extra": 1}, client),
        ({**ok, "party_size": "2"}, client),
        ({**ok, "party_size": 0}, client),
        ({**ok, "party_size": 51}, client),
        ({**ok, "party_size": 1.0}, client),
        ({**ok, "start": ok["start"] + "\n"}, client),
        ({**ok, "start": ok["start"].replace(":00-", ":00\x00-")}, client),
        ({**ok, "start": ok["start"].replace(":00-", ":00.5-")}, client),
        ({**ok, "start": "2026-W10-6T09:00:00-06:00"}, client),
        ({**ok, "start": ok["start"][:19]}, client),
        ({**ok, "start": 1_900_000_000}, client),
        ({**ok, "provider_id": "clinic-2\n"}, client),
        ({**ok, "provider_id": "nowhere"}, client),
        ({**ok, "start": f"{D1}T00:00:00-06:00"}, client),  # not a slot start
        ({**ok, "start": "2000-01-01T09:00:00Z"}, client),  # started long ago
        (ok, {**client, "Content-Type": "application/jsonx"}),
        (ok, {**client, "Content-Type": "text/plain"}),
        (ok, [*client.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]),
        (ok, {**client, "Idempotency-Key": "k" * 201}),
        (ok, {**client, "Idempotency-Key": "with space"}),
        (ok, {"Authorization": "Basic dXNlcjpwdw=="}),
        (ok, {"Authorization": "Bearer hbk_00000000_" + "x" * 43}),
        (ok, {}),
        (ok, admin),
        (ok, [*client.items(), ("Authorization", f"Bearer {keys['operator']}")]),
    ]
    out = [{"method": "POST", "url": "/v1/holds", "body": b, "headers": h} for b, h in holds]
    bookings = [
        {"hold_id": "short", "patient": {"reference": "r"}},
        {"hold_id": hold_id, "patient": {"reference": "r"}},
        {"hold_id": hold_id, "patient": {"reference": ""}},
        {"hold_id": hold_id, "patient": {"reference": "r", "email": "x@example.org"}},
        {"hold_id": hold_id},
    ]
    out += [
        {"method": "POST", "url": "/v1/bookings", "body": b, "headers": client} for b in bookings
    ]
    where = "lat=41.95&lng=-87.64&service=vaccine"
    queries = [
        "lng=-87.64&service=vaccine",
        "lat=100&lng=0&service=vaccine",
        "lat=%D9%A4%D9%A1&lng=-87.64&service=vaccine",  # Arabic-Indic 41
        "lat=nan&lng=0&service=vaccine",
        "lat=inf&lng=0&service=vaccine",
        f"{where}&radius_km=0",
        f"{where}&limit=0",
        f"{where}&limit=101",
        f"{where}&order=random",
        f"{where}&from=tomorrow",
        f"{where}&from={D1}T00:00:00",
        "lat=41.95&lng=-87.64&service=vaccine%0A",
        f"{where}&party_size=51",
        f"{where}&language=" + "x" * 65,
    ]
    out += [{"method": "GET", "url": f"/v1/search?{q}", "headers": {}} for q in queries]
    return out


def _send(url: str, spec: dict[str, Any]) -> httpx.Response:
    body = spec.get("body")
    kw: dict[str, Any] = {"headers": spec["headers"]}
    if isinstance(body, bytes):
        kw["content"] = body
    elif body is not None:
        kw["json"] = body
    return httpx.request(spec["method"], url + spec["url"], timeout=30, **kw)


def test_the_same_odd_inputs_get_the_same_answers_on_both_ways_in(
    fast: FastPath, api: httpx.Client, keys: dict[str, str], base: str, slow: str
) -> None:
    """Status, body and headers byte for byte (but the Date), fast path on and off."""
    served = fast.served
    for spec in _odd_requests(api, keys):
        a, b = _send(base, spec), _send(slow, spec)
        assert a.status_code >= 400, (spec, a.text)  # none of these is a success
        assert a.status_code != 500, (spec, a.text)
        assert (a.status_code, a.content) == (b.status_code, b.content), (spec, a.text, b.text)
        headers_a = {k: v for k, v in a.headers.items() if k != "date"}
        headers_b = {k: v for k, v in b.headers.items() if k != "date"}
        assert headers_a == headers_b, spec
    assert fast.served > served  # some were answered by the fast path (401, 403, 404, 409)


def test_well_formed_requests_get_the_same_answers_on_both_ways_in(
    fast: FastPath, api: httpx.Client, base: str, slow: str
) -> None:
    free = [s["start"] for s in slots(api, "clinic-2") if s["remaining"] == 2]
    search = f"/v1/search?lat=41.95&lng=-87.64&service=vaccine&from={D1}T08:00:00-06:00"
    for url in (base, slow):
        hold = api.post(
            f"{url}/v1/holds",
            json={"provider_id": "clinic-2", "service": "vaccine", "start": free.pop()},
        )
        booking = api.post(
            f"{url}/v1/bookings",
            json={"hold_id": hold.json()["hold_id"], "patient": {"reference": "same"}},
        )
        found = httpx.get(url + search)
        answers = [hold, booking, found]
        assert [r.status_code for r in answers] == [201, 201, 200]
        if url == base:
            first = answers
    for a, b in zip(first, answers, strict=True):
        assert {k for k in a.headers if k != "date"} == {k for k in b.headers if k != "date"}
        assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
        assert sorted(a.json()) == sorted(b.json())
    assert (
        first[2].json()["results"][0]["provider_id"]
        == answers[2].json()["results"][0]["provider_id"]
    )
