"""The gateway's edges, found from outside (issue 13): each test here failed before its fix.

Over real HTTP against a running stack (real Ray, real redis-server)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from gateway.schemas import BookingOut, HoldOut, ProviderOut, SearchOut, SlotsOut
from tests.gateway.test_api import D1, SCHEDULE, assert_problem, slots
from tests.gateway.test_ops import events
from tests.polling import until

pytestmark = pytest.mark.integration
VISITOR = {"visitor_id": "v1", "lat": 41.88, "lng": -87.63}
ARABIC_NINE = "\u0660\u0669:\u0660\u0660"  # 09:00 in Arabic-Indic digits


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"feed_keepalive_seconds": 7.0, "access_log": True}


def _hold(api: httpx.Client, pid: str, n: int, **headers: str) -> httpx.Response:
    start = slots(api, pid)[n]["start"]
    body = {"provider_id": pid, "service": "vaccine", "start": start}
    return api.post("/v1/holds", json=body, headers=headers)


# 1. The feed keeps idle clients.


def test_an_idle_feed_client_gets_keep_alives_and_stays_connected(
    base: str, api: httpx.Client
) -> None:
    """redis-py 8 times a socket out after 5 s; the feed's blocking read is longer."""
    seen: list[str] = []
    started = time.monotonic()
    timeout = httpx.Timeout(30, read=20)
    with httpx.stream("GET", f"{base}/v1/feed", timeout=timeout) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            seen.append(line)
            if seen.count(": keep-alive") == 2:
                break
    # Two keep-alives, 7 s apart: the stream lived well past redis-py's 5 s.
    assert time.monotonic() - started >= 13, seen


# 2. Idempotency-Key is the caller's, across every calendar.


def test_an_idempotency_key_reused_on_another_provider_is_a_422_and_holds_nothing(
    base: str, api: httpx.Client
) -> None:
    first = _hold(api, "clinic-1", 14, **{"Idempotency-Key": "across-1"})
    assert first.status_code == 201, first.text
    before = slots(api, "clinic-2")[14]["remaining"]
    other = _hold(api, "clinic-2", 14, **{"Idempotency-Key": "across-1"})
    assert_problem(other, 422, "idempotency_conflict")
    assert slots(api, "clinic-2")[14]["remaining"] == before  # no second hold
    # The same request again is the first answer.
    again = _hold(api, "clinic-1", 14, **{"Idempotency-Key": "across-1"})
    assert again.status_code == 201 and again.json() == first.json()
    # A booking under a key already used for a hold elsewhere: also a 422.
    booking = api.post(
        "/v1/bookings",
        json={"hold_id": first.json()["hold_id"], "patient": {"reference": "x"}},
        headers={"Idempotency-Key": "across-1"},
    )
    assert_problem(booking, 422, "idempotency_conflict")


def test_keys_are_per_caller(base: str, api: httpx.Client, ops: httpx.Client) -> None:
    mine = _hold(api, "clinic-1", 15, **{"Idempotency-Key": "shared-name"})
    theirs = _hold(ops, "clinic-1", 16, **{"Idempotency-Key": "shared-name"})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["hold_id"] != theirs.json()["hold_id"]


# 3. A repeated booking shows its token again.


def test_a_repeated_booking_returns_the_first_answer_with_a_token_that_works(
    base: str, api: httpx.Client
) -> None:
    hold = _hold(api, "clinic-1", 17).json()
    body = {"hold_id": hold["hold_id"], "patient": {"reference": "lost-answer"}}
    key = {"Idempotency-Key": "lost-answer-1"}
    first = api.post("/v1/bookings", json=body, headers=key)
    repeat = api.post("/v1/bookings", json=body, headers=key)
    assert first.status_code == repeat.status_code == 201
    assert repeat.json() == first.json() and repeat.json()["booking_token"]
    token = repeat.json()["booking_token"]
    read = api.get(f"/v1/bookings/{first.json()['booking_id']}", headers={"X-Booking-Token": token})
    assert read.status_code == 200 and read.json()["status"] == "active"


# 8. Admin input that used to be a 500.


@pytest.mark.parametrize(
    "change",
    [
        {"timezone": "America"},
        {"timezone": "Etc"},
        {"timezone": "../../etc/passwd"},
        {"name": "n" * 300},
        {"first_day": "9999-12-25"},
        {"first_day": "2026-W10-1"},
        {"schedule": {"days": {"mon": [{"opens": ARABIC_NINE, "closes": "12:00", "capacity": 1}]}}},
        {"schedule": {"days": {"mon": []}, "closed_dates": ["2026-W10-1"]}},
    ],
)
def test_bad_admin_input_is_a_422(base: str, ops: httpx.Client, change: dict[str, Any]) -> None:
    r = ops.put("/v1/providers/clinic-bad", json={**SCHEDULE, **change})
    assert_problem(r, 422, "validation_error")
    assert_problem(ops.get("/v1/providers/clinic-bad"), 404, "provider_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"connector": "csv", "content": "id\n", "timezone": "America"},
        {"connector": "smart", "url": "http://[::1/x"},
        {"connector": "smart", "url": "http://example.org:port/x"},
        {"connector": "smart", "url": "ftp://example.org/x"},
        {"connector": "fhir", "content": "[" * 100_000 + "]" * 100_000},
    ],
)
def test_bad_imports_are_a_422(base: str, ops: httpx.Client, body: dict[str, Any]) -> None:
    assert_problem(ops.post("/v1/imports", json=body), 422, "validation_error")


def test_a_deeply_nested_body_is_a_422(base: str, api: httpx.Client) -> None:
    nested = b'{"provider_id": ' + b"[" * 4000 + b"]" * 4000 + b"}"
    r = api.post("/v1/holds", content=nested, headers={"Content-Type": "application/json"})
    assert_problem(r, 422, "validation_error")


# 9. 5xx answers are counted and logged like any other.


def test_a_500_is_a_problem_counted_in_metrics_and_logged_once(
    base: str, stack: tuple[str, Hexbook, FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    app = stack[2]

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.router.add_api_route("/v1/test-broken", broken, include_in_schema=False)
    app.middleware_stack = app.build_middleware_stack()
    with caplog.at_level(logging.INFO):
        r = httpx.get(f"{base}/v1/test-broken")
    assert_problem(r, 500, "internal")
    metrics = httpx.get(f"{base}/metrics").text
    assert 'route="/v1/test-broken",status="500"' in metrics
    access = [getattr(r, "fields", {}) for r in caplog.records if r.name == "hexbook.access"]
    assert any(a["status"] == 500 and a["route"] == "/v1/test-broken" for a in access), access
    bugs = [r for r in caplog.records if r.name == "hexbook.gateway" and r.exc_info]
    assert len(bugs) == 1  # once, by hexbook; uvicorn did not see the exception
    assert not [r for r in caplog.records if r.name.startswith("uvicorn") and r.exc_info]


# 10. Parsing, the same on both ways in.


def test_a_body_not_declared_as_json_is_a_415(base: str, api: httpx.Client) -> None:
    start = slots(api, "clinic-1")[18]["start"]
    body = json.dumps({"provider_id": "clinic-1", "service": "vaccine", "start": start})
    for content_type in ("application/jsonx", "text/plain", "application/x-www-form-urlencoded"):
        r = api.post("/v1/holds", content=body, headers={"Content-Type": content_type})
        assert_problem(r, 415, "unsupported_media_type")
    assert slots(api, "clinic-1")[18]["remaining"] == 2


@pytest.mark.parametrize(
    "start",
    [
        "{d}T09:00:00\x00-06:00",
        "{d}T09:00:00",
        "{d}T09:00:00.5-06:00",
        "{d}T09:00-06:00",
        "2026-W10-6T09:00:00-06:00",
        "{d} 09:00:00-06:00",
        "{d}T09:00:00+24:00",
        "\u0662\u0660\u0662\u0666-03-07T09:00:00-06:00",
    ],
)
def test_timestamps_must_be_rfc_3339_in_whole_seconds(
    base: str, api: httpx.Client, start: str
) -> None:
    body = {"provider_id": "clinic-1", "service": "vaccine", "start": start.format(d=D1)}
    assert_problem(api.post("/v1/holds", json=body), 422, "validation_error")


def test_arabic_indic_digits_are_not_a_latitude(base: str) -> None:
    params = {"lat": "\u0664\u0661.\u0668\u0668", "lng": -87.63, "service": "vaccine"}  # 41.88
    r = httpx.get(f"{base}/v1/search", params=params)
    assert_problem(r, 422, "validation_error")


def test_two_idempotency_keys_are_a_422(base: str, api: httpx.Client) -> None:
    start = slots(api, "clinic-1")[19]["start"]
    r = api.post(
        "/v1/holds",
        json={"provider_id": "clinic-1", "service": "vaccine", "start": start},
        headers=[("Idempotency-Key", "one"), ("Idempotency-Key", "two")],
    )
    assert_problem(r, 422, "validation_error")
    assert "one Idempotency-Key" in r.json()["detail"]


def test_feed_ids_beyond_64_bits_are_refused_and_a_future_id_is_told_to_reset(
    base: str, api: httpx.Client
) -> None:
    for bad in ("99999999999999999999-0", "1-99999999999999999999", "18446744073709551616-0"):
        assert_problem(httpx.get(f"{base}/v1/feed", params={"after": bad}), 422, "validation_error")
    future = f"{int(time.time() * 1000) + 86_400_000}-0"
    with httpx.stream("GET", f"{base}/v1/feed", headers={"Last-Event-ID": future}, timeout=20) as r:
        first = next(events(r.iter_lines()))
    assert first["event"] == "reset" and first["id"] != future


def test_a_provider_id_with_a_final_newline_cannot_be_created(base: str, ops: httpx.Client) -> None:
    r = ops.put("/v1/providers/clinic-nl%0A", json=SCHEDULE)
    assert_problem(r, 422, "validation_error")


# 11. A wrong token and a missing booking are indistinguishable.


def test_a_wrong_token_and_a_missing_booking_get_the_same_answer(
    base: str, api: httpx.Client
) -> None:
    hold = _hold(api, "clinic-1", 20).json()
    booking = api.post(
        "/v1/bookings", json={"hold_id": hold["hold_id"], "patient": {"reference": "t"}}
    ).json()
    real = booking["booking_id"]
    prefix, _, secret = real.partition(".")
    missing = f"{prefix}.{'A' * len(secret)}"  # same calendar, no such booking
    unknown_calendar = f"{'Y2xpbmljLTkvdmFjY2luZQ'}.{secret}"  # clinic-9/vaccine
    wrong = {"X-Booking-Token": "w" * 22}
    answers = [
        api.get(f"/v1/bookings/{real}", headers=wrong),
        api.get(f"/v1/bookings/{missing}", headers=wrong),
        api.get(f"/v1/bookings/{unknown_calendar}", headers=wrong),
        api.get(f"/v1/bookings/{real}"),
        api.delete(f"/v1/bookings/{missing}", headers=wrong),
    ]
    for r in answers:
        assert_problem(r, 404, "booking_not_found")
    assert len({r.text for r in answers}) == 1, [r.text for r in answers]


# 13. What OpenAPI says is what the server does.


def test_a_wrong_method_is_a_405_that_says_which_are_allowed(base: str, api: httpx.Client) -> None:
    r = api.put("/v1/holds", json={})
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_openapi_documents_errors_anonymous_paths_and_formats(base: str) -> None:
    doc = httpx.get(f"{base}/openapi.json").json()
    hold = doc["paths"]["/v1/holds"]["post"]
    for status in ("401", "403", "404", "409", "413", "415", "422", "429", "503"):
        assert status in hold["responses"], status
        assert "application/problem+json" in hold["responses"][status]["content"]
    assert hold["responses"]["503"]["headers"]["Retry-After"]["required"]
    assert hold["security"] == [{"HTTPBearer": []}]
    assert doc["paths"]["/v1/search"]["get"]["security"] == [{}, {"HTTPBearer": []}]
    start = doc["components"]["schemas"]["HoldRequest"]["properties"]["start"]
    assert start["format"] == "date-time" and start["pattern"].startswith("^[0-9]{4}")
    assert "pattern" in doc["components"]["schemas"]["HoldRequest"]["properties"]["provider_id"]


def test_every_success_answer_matches_its_response_model(
    base: str, api: httpx.Client, ops: httpx.Client
) -> None:
    created = ops.put("/v1/providers/clinic-model", json=SCHEDULE)
    assert created.status_code == 201
    ProviderOut.model_validate(created.json())
    ProviderOut.model_validate(api.get("/v1/providers/clinic-model").json())
    SlotsOut.model_validate(api.get("/v1/providers/clinic-model/slots?service=vaccine").json())
    found = httpx.get(
        f"{base}/v1/search",
        params={"lat": 41.88, "lng": -87.63, "service": "vaccine", "from": f"{D1}T00:00:00Z"},
    )
    assert SearchOut.model_validate(found.json()).results
    hold = _hold(api, "clinic-model", 0)
    HoldOut.model_validate(hold.json())
    booked = api.post(
        "/v1/bookings", json={"hold_id": hold.json()["hold_id"], "patient": {"reference": "m"}}
    )
    out = BookingOut.model_validate(booked.json())
    got = api.get(f"/v1/bookings/{out.booking_id}", headers={"X-Booking-Token": out.booking_token})
    BookingOut.model_validate(got.json())
    # And against the served OpenAPI document's own schemas (what clients generate from).
    doc = httpx.get(f"{base}/openapi.json").json()
    for path, method, answer in (
        ("/v1/holds", "post", hold),
        ("/v1/bookings", "post", booked),
        ("/v1/search", "get", found),
    ):
        ref = doc["paths"][path][method]["responses"][str(answer.status_code)]["content"][
            "application/json"
        ]["schema"]["$ref"]
        required = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["required"]
        assert set(required) <= set(answer.json()), (path, required)


def _conforms(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate ``instance`` against a schema of the served document, its refs resolved."""
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(instance)


def _sse(text: str) -> list[dict[str, str]]:
    """The events of a server-sent stream as a client reads them (comments and a lone
    ``retry`` left out)."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and ": " in line)
        if "data" in fields:
            events.append({k: v for k, v in fields.items() if k != "retry"})
    return events


def test_the_series_template_and_the_visitor_stream_answer_as_documented(
    stack: tuple[str, Hexbook, FastAPI], api: httpx.Client, ops: httpx.Client
) -> None:
    """Both were found by the OpenAPI fuzz: the template's answer carries ``service``,
    which its documented model forbade; the visitor stream's events were documented as
    one string, while a client reads each event as an object whose data is a visitor."""
    base, hb, _ = stack
    doc = httpx.get(f"{base}/openapi.json").json()
    put = ops.put("/v1/series-templates/mmr", json={"min_days": 2, "max_days": 9})
    assert put.status_code == 200, put.text
    documented = doc["paths"]["/v1/series-templates/{service_id}"]["put"]["responses"]["200"]
    _conforms(doc, documented["content"]["application/json"]["schema"], put.json())
    assert put.json()["service"] == "mmr"
    # A room for a service no site offers: its visitor is told at once that nothing is
    # left, and the stream carries that one event and ends.
    opens = datetime.fromtimestamp(int(hb.clock.seconds()), UTC).isoformat()
    room = {"room_id": "empty", "service": "nothing-here", "lat": 41.88, "lng": -87.63,
            "radius_km": 10, "opens_at": opens, "per_minute": 600}  # fmt: skip
    assert ops.post("/v1/rooms", json=room).status_code == 201
    assert api.post("/v1/rooms/empty/visitors", json=VISITOR).status_code == 201
    until(lambda: api.get("/v1/rooms/empty/visitors/v1").json()["status"] == "sold_out", 30)
    stream = api.get("/v1/rooms/empty/visitors/v1/events", timeout=30)
    assert stream.status_code == 200
    events = _sse(stream.text)
    assert [e["event"] for e in events] == ["visitor"], stream.text
    path = doc["paths"]["/v1/rooms/{room_id}/visitors/{visitor_id}/events"]["get"]
    per_event = path["responses"]["200"]["content"]["text/event-stream"]["schema"]
    for event in events:
        _conforms(doc, per_event, event)
        data = per_event["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        _conforms(doc, data["contentSchema"], json.loads(event["data"]))
    assert json.loads(events[0]["data"])["status"] == "sold_out"
    # The feed's events are documented the same way.
    feed = doc["paths"]["/v1/feed"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert feed["schema"]["properties"]["event"]["enum"] == ["availability", "reset"]


# 14. The API docs work offline.


def test_docs_are_served_from_local_assets(base: str) -> None:
    page = httpx.get(f"{base}/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "http" not in page.text.split("<body>")[1].lower()
    for asset in ("/assets/swagger-ui-bundle.js", "/assets/swagger-ui.css"):
        assert asset in page.text
        r = httpx.get(f"{base}{asset}")
        assert r.status_code == 200 and len(r.content) > 100_000


def test_docs_render_in_a_browser_with_nothing_from_outside(base: str) -> None:
    """Swagger UI in Chromium: every operation listed, every request to the gateway."""
    from tests.browser import page

    with page() as p:
        asked: list[str] = []
        said: list[str] = []
        p.on("request", lambda request: asked.append(request.url))
        p.on("console", lambda message: said.append(message.text))
        p.goto(f"{base}/docs")
        p.wait_for_selector(".opblock", timeout=30_000)
        operations = p.locator(".opblock").count()
        title = p.locator(".info .title").inner_text()
    assert operations >= 20, operations
    assert "hexbook" in title
    assert asked and all(url.startswith(base) for url in asked), asked
    assert [m for m in said if "Content Security Policy" in m] == []  # the page's CSP holds
