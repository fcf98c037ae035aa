"""The pages over HTTP, as a browser with JavaScript off sends them: plain forms and
links (the browser tests, tests/gateway/test_pages_browser.py, drive real Chromium)."""

from __future__ import annotations

import csv
import html
import io
import re
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from gateway.keys import KeyStore
from tests.dates import ahead
from tests.gateway.conftest import serving_tls
from tests.gateway.sites import put_day_site
from tests.polling import until

SERVICE = "covid-vaccine"
DAY = ahead(3)
# Near 60614 (Lincoln Park), the gazetteer's centre 41.9229, -87.6483.
SITES = {"clinic-p1": (41.925, -87.650), "clinic-p2": (41.930, -87.640)}


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"index_first_day": None, "index_days": 20, "max_body_bytes": 65536}


@pytest.fixture(scope="module")
def sites(stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client) -> dict[str, list[str]]:
    """Two sites near 60614, open 09:00-12:00 on DAY with 2 places a slot; the index
    has them before a test searches."""
    made = {
        pid: put_day_site(ops, pid, SERVICE, DAY, lat=lat, lng=lng, capacity=2, closes="12:00")
        for pid, (lat, lng) in SITES.items()
    }
    until(lambda: len(_search(ops)) == 2)
    return made


def _search(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get("/v1/search", params={"lat": 41.9229, "lng": -87.6483, "service": SERVICE})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def _remaining(ops: httpx.Client, pid: str, start: str, service: str = SERVICE) -> int:
    r = ops.get(f"/v1/providers/{pid}/slots", params={"service": service})
    return next(int(s["remaining"]) for s in r.json()["slots"] if s["start"] == start)


@pytest.fixture
def browser(stack: tuple[str, Hexbook, FastAPI]) -> Iterator[httpx.Client]:
    """A browser with JavaScript off: cookies kept, redirects followed."""
    with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as client:
        yield client


def fields(page: str) -> dict[str, str]:
    """The named inputs of the page's forms (the last of a name wins)."""
    found = re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page)
    return {k: html.unescape(v) for k, v in found}


def _slot_links(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="(/book\?[^"]+)"', page)]


def book_one(browser: httpx.Client, email: str = "") -> httpx.Response:
    """Find, pick the first slot, hold, confirm: the booking's page."""
    found = browser.get("/", params={"q": "60614"})
    assert found.status_code == 200, found.text
    picked = browser.get(_slot_links(found.text)[0])
    assert picked.status_code == 200, picked.text
    form = {k: v for k, v in fields(picked.text).items() if k != "lang"}
    held = browser.post("/book", data=form)
    assert held.status_code == 200 and "/hold/" in held.url.path, held.text
    return browser.post(
        held.url.path, data={**fields(held.text), "email": email, "action": "confirm"}
    )


def test_a_patient_books_moves_and_cancels_with_forms_and_links_only(
    sites: dict[str, list[str]], browser: httpx.Client, ops: httpx.Client
) -> None:
    found = browser.get("/", params={"q": "233 S Wacker Dr, Chicago, IL 60614"})
    assert found.status_code == 200
    assert "clinic-p1" in found.text and "clinic-p2" in found.text
    assert "<svg" in found.text and "data-cell=" in found.text  # the hex map
    assert "<script" not in found.text.split("</head>")[1]  # no inline script at all
    booked = book_one(browser, "pat@example.org")
    assert booked.status_code == 200, booked.text
    assert "/booking/" in booked.url.path and "token=" in str(booked.url)
    booking_id = booked.url.path.rsplit("/", 1)[1]
    token = booked.url.params["token"]
    api = ops.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token})
    assert api.status_code == 200 and api.json()["status"] == "active", api.text
    assert api.json()["patient"]["contact"]["email"] == "pat@example.org"
    assert api.json()["start"] == sites["clinic-p1"][0]
    # Move to a later slot of the same site: one of the page's buttons.
    later = re.findall(r'name="start" value="([^"]+)"', booked.text)
    assert later, booked.text
    form = fields(booked.text)
    moved = browser.post(
        booked.url.path, data={**form, "start": html.unescape(later[1]), "action": "move"}
    )
    assert moved.status_code == 200, moved.text
    now = ops.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token}).json()
    assert now["start"] == html.unescape(later[1]) and now["status"] == "active"
    assert _remaining(ops, "clinic-p1", sites["clinic-p1"][0]) == 2  # the old place freed
    cancelled = browser.post(moved.url.path, data={**fields(moved.text), "action": "cancel"})
    assert cancelled.status_code == 200 and 'class="status">cancelled<' in cancelled.text
    after = ops.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token})
    assert after.json()["status"] == "cancelled"
    form = {**fields(moved.text), "action": "cancel"}
    repeat = browser.post(moved.url.path, data=form)  # the same form again: the same answer
    assert repeat.status_code == 200 and 'class="status">cancelled<' in repeat.text
    again = browser.post(moved.url.path, data={**form, "idem": "another-form-1"})
    assert again.status_code == 409 and 'data-code="booking_not_active"' in again.text


def test_a_hold_form_sent_twice_holds_one_place(
    sites: dict[str, list[str]], browser: httpx.Client, ops: httpx.Client
) -> None:
    start = sites["clinic-p2"][3]
    picked = browser.get(
        "/book", params={"provider_id": "clinic-p2", "service": SERVICE, "start": start}
    )
    form = {k: v for k, v in fields(picked.text).items() if k != "lang"}
    first = browser.post("/book", data=form)
    second = browser.post("/book", data=form)  # a double click, a reload
    assert first.status_code == second.status_code == 200
    assert first.url == second.url  # the same hold
    assert _remaining(ops, "clinic-p2", start) == 1
    released = browser.post(first.url.path, data={**fields(first.text), "action": "release"})
    assert released.status_code == 200
    assert _remaining(ops, "clinic-p2", start) == 2


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"party": "two"}, "validation_error"),
        ({"party": "0"}, "validation_error"),
        ({"start": "tomorrow"}, "validation_error"),
        ({"provider_id": "nowhere"}, "provider_not_found"),
        ({"idem": "<script>"}, "validation_error"),
    ],
)
def test_a_bad_form_is_a_4xx_page_saying_why_and_holds_nothing(
    sites: dict[str, list[str]], browser: httpx.Client, ops: httpx.Client, form: dict[str, str],
    code: str,
) -> None:  # fmt: skip
    start = sites["clinic-p1"][5]
    good = {"provider_id": "clinic-p1", "service": SERVICE, "start": start, "party": "1"}
    r = browser.post("/book", data={**good, **form})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert f'data-code="{code}"' in r.text, r.text
    assert _remaining(ops, "clinic-p1", start) == 2


def test_what_is_not_a_form_or_a_place_is_refused_with_a_clear_page(
    sites: dict[str, list[str]], browser: httpx.Client
) -> None:
    as_json = browser.post("/book", json={"provider_id": "clinic-p1"})
    assert as_json.status_code == 422 and "x-www-form-urlencoded" in as_json.text
    nowhere = browser.get("/", params={"q": "Atlantis"})
    assert nowhere.status_code == 422 and "Atlantis" in nowhere.text
    no_booking = browser.get("/booking/bk_nobody", params={"token": "x"})
    assert no_booking.status_code == 404 and 'data-code="booking_not_found"' in no_booking.text


def test_the_pages_speak_spanish_when_asked_and_keep_it(
    sites: dict[str, list[str]], browser: httpx.Client
) -> None:
    es = browser.get("/", params={"q": "60614", "lang": "es"})
    assert '<html lang="es">' in es.text and "Lugares cercanos" in es.text
    assert re.search(r"(lunes|martes|miércoles|jueves|viernes|sábado|domingo)", es.text)
    assert "English" in es.text  # the switch back
    kept = browser.get("/")  # the cookie keeps the choice
    assert '<html lang="es">' in kept.text
    asked = browser.get("/", params={"lang": "en"})
    assert '<html lang="en">' in asked.text and "Find a vaccination appointment" in asked.text


def _waitlist_form(page: str) -> dict[str, str]:
    form = re.search(r'<form method="post" action="/waitlist[^"]*">(.*?)</form>', page, re.S)
    assert form is not None, page
    return fields(form.group(1))


def test_the_waitlist_from_the_find_page_offers_a_place_booked_with_one_click(
    sites: dict[str, list[str]], browser: httpx.Client, ops: httpx.Client
) -> None:
    """Places are free near 60614: the entry is offered one at once, held for it."""
    data = _waitlist_form(browser.get("/", params={"q": "60614"}).text)
    joined = browser.post("/waitlist", data={**data, "email": "wait@example.org"})
    assert joined.status_code == 200 and "/waitlist/" in joined.url.path, joined.text
    assert "A place is held for you" in joined.text
    again = browser.post("/waitlist", data={**data, "email": "wait@example.org"})
    assert again.url == joined.url  # the same form sent twice: one entry
    booked = browser.post(joined.url.path, data={**fields(joined.text), "action": "accept"})
    assert booked.status_code == 200 and "/booking/" in booked.url.path, booked.text
    booking_id, token = booked.url.path.rsplit("/", 1)[1], booked.url.params["token"]
    api = ops.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token}).json()
    assert api["status"] == "active" and api["patient"]["contact"]["email"] == "wait@example.org"
    cancelled = browser.post(booked.url.path, data={**fields(booked.text), "action": "cancel"})
    assert cancelled.status_code == 200


def test_a_waitlist_entry_where_nothing_is_free_waits_and_can_leave(
    sites: dict[str, list[str]], browser: httpx.Client
) -> None:
    data = {"lat": "41.70", "lng": "-87.55", "service": SERVICE, "radius": "1", "party": "1"}
    joined = browser.post("/waitlist", data={**data, "idem": "far-away-entry-1"})
    assert joined.status_code == 200 and 'data-status="waiting"' in joined.text, joined.text
    left = browser.post(joined.url.path, data={**fields(joined.text), "action": "leave"})
    assert left.status_code == 200
    gone = browser.get(joined.url.path, params=dict(joined.url.params))
    assert 'data-status="cancelled"' in gone.text or "no_offer" in gone.text, gone.text
    bad = browser.post("/waitlist", data={**data, "lat": "north"})
    assert bad.status_code == 422 and "lat must be a number" in bad.text


def test_the_services_eligibility_questions_are_asked_and_checked_at_the_hold(
    sites: dict[str, list[str]], browser: httpx.Client, ops: httpx.Client
) -> None:
    starts = put_day_site(ops, "clinic-elig", "elig-vaccine", DAY, lat=41.9, lng=-87.6)
    rule = {"ages": [{"min_years": 65}], "residence": {"postal_codes": ["60614"]}}
    assert ops.put("/v1/rules/elig-vaccine", json=rule).status_code == 201
    query = {"provider_id": "clinic-elig", "service": "elig-vaccine", "start": starts[0]}
    picked = browser.get("/book", params=query)
    assert 'name="birth_date"' in picked.text and 'name="postal_code"' in picked.text
    form = {k: v for k, v in fields(picked.text).items() if k != "lang"}
    young = browser.post("/book", data={**form, "birth_date": "2001-05-05",
                                        "postal_code": "60614"})  # fmt: skip
    assert young.status_code == 403 and 'data-code="not_eligible"' in young.text, young.text
    assert _remaining(ops, "clinic-elig", starts[0], "elig-vaccine") == 1
    old = browser.post("/book", data={**form, "idem": "an-eligible-one", "birth_date":
                                      "1950-05-05", "postal_code": "60614"})  # fmt: skip
    assert old.status_code == 200 and "/hold/" in old.url.path, old.text
    assert _remaining(ops, "clinic-elig", starts[0], "elig-vaccine") == 0


# --- sign-in, roles, CSRF ------------------------------------------------------------


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/signin", data={"api_key": key})


def test_signing_in_gives_an_httponly_samesite_session_that_a_revocation_ends(
    stack: tuple[str, Hexbook, FastAPI], browser: httpx.Client
) -> None:
    store = KeyStore(stack[1].redis)
    key, record = store.create("operator", "revoked soon")
    r = sign_in(browser, key)
    assert r.status_code == 200 and r.url.path == "/dashboard"
    cookie = r.history[0].headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert key not in cookie and record.key_id not in cookie  # the key never leaves
    assert browser.get("/dashboard").status_code == 200
    store.revoke(record.key_id)
    gone = browser.get("/dashboard")
    assert gone.url.path == "/signin"  # signed out at once
    wrong = sign_in(browser, "hbk_00000000_" + "x" * 43)
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.text


def test_the_session_cookie_is_secure_over_tls(
    stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str], tmp_path: Path
) -> None:
    from gateway.app import create_app
    from gateway.settings import Settings
    from tests.gateway.test_security import _self_signed

    cert, key = _self_signed(tmp_path)
    settings = Settings(redis_url=stack[1].redis_url, index_first_day=None, index_days=20)
    with (
        serving_tls(create_app(settings, hexbook=stack[1]), (cert, key)) as url,
        httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=cert)) as tls,
    ):
        r = sign_in(tls, keys["operator"])
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_each_role_opens_only_its_pages(
    sites: dict[str, list[str]], stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str]
) -> None:
    opens = {
        "booking-client": {"/dashboard": 403, "/admin": 403, "/admin/clinic-p1": 403},
        "provider-admin": {"/dashboard": 403, "/admin": 200, "/admin/clinic-p1": 200},
        "operator": {"/dashboard": 200, "/admin": 200, "/admin/clinic-p1": 200},
    }
    for role, pages in opens.items():
        with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as client:
            sign_in(client, keys[role])
            for path, status in pages.items():
                r = client.get(path)
                assert r.status_code == status, (role, path, r.status_code)
            nav = client.get("/").text.split("</nav>")[0]
            assert ('href="/dashboard"' in nav) == (role == "operator"), role
            assert ('href="/admin"' in nav) == (role != "booking-client"), role
    with httpx.Client(base_url=stack[0], timeout=60) as anonymous:
        r = anonymous.get("/admin")
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")
        assert anonymous.get("/dashboard/events").status_code == 303


def test_a_provider_admin_manages_only_its_own_sites(
    sites: dict[str, list[str]], stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client
) -> None:
    put_day_site(ops, "other-1", SERVICE, DAY, lat=41.9, lng=-87.7)
    key, _ = KeyStore(stack[1].redis).create("provider-admin", "p1 only", ("clinic-p1",))
    with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as client:
        sign_in(client, key)
        listed = client.get("/admin").text
        assert "clinic-p1" in listed and "clinic-p2" not in listed and "other-1" not in listed
        assert client.get("/admin/clinic-p2").status_code == 403
        assert client.get("/admin/other-1/export.csv").status_code == 403
        csrf = fields(client.get("/admin/clinic-p1").text)["csrf"]
        r = client.post("/admin/clinic-p2", data={"csrf": csrf, "mon": "09:00-10:00/1"})
        assert r.status_code == 403


def test_admin_forms_without_the_sessions_csrf_token_change_nothing(
    sites: dict[str, list[str]], stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str],
    ops: httpx.Client,
) -> None:  # fmt: skip
    before = ops.get("/v1/providers/clinic-p1/slots", params={"service": SERVICE}).json()
    with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as client:
        sign_in(client, keys["provider-admin"])
        form = {"mon": "06:00-07:00/9", "action": "save", "slot_minutes": "15"}
        for csrf in (None, "forged"):
            data = form if csrf is None else {**form, "csrf": csrf}
            r = client.post("/admin/clinic-p1", data=data)
            assert r.status_code == 403 and "out of date" in r.text
        out = client.post("/signout", data={"csrf": "forged"})
        assert out.status_code == 403
    after = ops.get("/v1/providers/clinic-p1/slots", params={"service": SERVICE}).json()
    assert after == before


def test_the_roster_cancels_and_exports_csv_and_xlsx(
    sites: dict[str, list[str]], stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str],
    browser: httpx.Client, ops: httpx.Client,
) -> None:  # fmt: skip
    booked = book_one(browser)
    booking_id = booked.url.path.rsplit("/", 1)[1]
    token = booked.url.params["token"]
    with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as admin:
        sign_in(admin, keys["provider-admin"])
        day = admin.get("/admin/clinic-p1", params={"day": DAY.isoformat()})
        assert f'data-booking="{booking_id}"' in day.text
        exported = admin.get("/admin/clinic-p1/export.csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        mine = [r for r in rows if r["booking_id"] == booking_id]
        assert mine and mine[0]["status"] == "active" and mine[0]["patient_reference"]
        xlsx = admin.get("/admin/clinic-p1/export.xlsx")
        assert xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
        from openpyxl import load_workbook

        book = load_workbook(io.BytesIO(xlsx.content), read_only=True)
        ids = [row[0] for row in book["bookings"].iter_rows(values_only=True)]
        assert booking_id in ids
        fill = list(book["fill by day"].iter_rows(values_only=True))
        assert fill[0] == ("day", "places", "booked", "fill_percent", "cancelled", "no_shows")
        assert any(r[0] == DAY.isoformat() and r[2] >= 1 for r in fill[1:]), fill
        csrf = fields(day.text)["csrf"]
        r = admin.post(
            f"/admin/clinic-p1/bookings/{booking_id}", data={"csrf": csrf, "day": str(DAY)}
        )
        assert r.status_code == 200, r.text
        after = admin.get("/admin/clinic-p1", params={"day": DAY.isoformat()}).text
    api = ops.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token}).json()
    assert api["status"] == "cancelled"
    row = after.split(f'data-booking="{booking_id}"')[1].split("</tr>")[0]
    assert "cancelled" in row and "Cancel</button>" not in row


def test_a_template_edit_previews_then_saves_the_new_slots(
    stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str], ops: httpx.Client
) -> None:
    put_day_site(ops, "clinic-edit", SERVICE, DAY, lat=41.93, lng=-87.66)
    weekday = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[DAY.weekday()]
    with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as admin:
        sign_in(admin, keys["provider-admin"])
        page = admin.get("/admin/clinic-edit")
        form = {"csrf": fields(page.text)["csrf"], weekday: "13:00-14:00/3", "slot_minutes": "30"}
        bad = admin.post("/admin/clinic-edit", data={**form, weekday: "1pm-2pm"})
        assert bad.status_code == 422 and "is not opens-closes/capacity" in html.unescape(bad.text)
        preview = admin.post("/admin/clinic-edit", data={**form, "action": "preview"})
        assert preview.status_code == 200
        assert f"{DAY.isoformat()} (2 slots, 6 places)" in preview.text
        closed = admin.post(
            "/admin/clinic-edit", data={**form, "closed_dates": str(DAY), "action": "preview"}
        )
        assert DAY.isoformat() not in closed.text.split('class="preview"')[1]
        blocked = {**form, "blocked": f"{DAY}T13:00 {DAY}T13:30", "action": "preview"}
        half = admin.post("/admin/clinic-edit", data=blocked)
        assert f"{DAY.isoformat()} (1 slot, 3 places)" in half.text
        bad_block = admin.post("/admin/clinic-edit", data={**blocked, "blocked": "noon"})
        assert bad_block.status_code == 422 and "blocked period" in html.unescape(bad_block.text)
        unchanged = ops.get("/v1/providers/clinic-edit/slots", params={"service": SERVICE})
        assert [s["start"][11:16] for s in unchanged.json()["slots"]][:1] == ["09:00"]
        saved = admin.post("/admin/clinic-edit", data={**form, "action": "save"})
        assert saved.status_code == 200 and "saved=1" in str(saved.url)
        assert f'name="{weekday}" value="13:00-14:00/3"' in saved.text
    slots = ops.get("/v1/providers/clinic-edit/slots", params={"service": SERVICE}).json()
    on_day = [s for s in slots["slots"] if s["start"].startswith(DAY.isoformat())]
    assert [(s["start"][11:16], s["capacity"]) for s in on_day] == [("13:00", 3), ("13:30", 3)]


def test_the_dashboard_pauses_and_resumes_a_waiting_room(
    stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str], ops: httpx.Client
) -> None:
    room = {"room_id": "dash-room", "service": "dash-vaccine", "lat": 41.7, "lng": -87.7,
            "radius_km": 1, "per_minute": 60,
            "opens_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    assert ops.post("/v1/rooms", json=room).status_code == 201
    until(lambda: ops.get("/v1/rooms/dash-room").json()["state"] == "open", 30)
    with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as client:
        sign_in(client, keys["operator"])
        until(lambda: "dash-room" in client.get("/dashboard").text, 10)
        board = client.get("/dashboard")
        csrf = fields(board.text)["csrf"]
        forged = client.post("/dashboard/rooms/dash-room", data={"state": "paused"})
        assert forged.status_code == 403
        assert ops.get("/v1/rooms/dash-room").json()["state"] != "paused"
        paused = client.post("/dashboard/rooms/dash-room", data={"csrf": csrf, "state": "paused"})
        assert paused.status_code == 200
        assert ops.get("/v1/rooms/dash-room").json()["state"] == "paused"
        rate = client.post("/dashboard/rooms/dash-room", data={"csrf": csrf, "per_minute": "x"})
        assert rate.status_code == 422
        client.post("/dashboard/rooms/dash-room", data={"csrf": csrf, "state": "closed"})
    assert ops.get("/v1/rooms/dash-room").json()["state"] == "closed"


def test_once_its_slot_has_started_the_roster_marks_a_no_show(
    sites: dict[str, list[str]], stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str],
    browser: httpx.Client, ops: httpx.Client, api: httpx.Client,
) -> None:  # fmt: skip
    """Last in the module: it moves the stack's clock to DAY 09:40 (and back)."""
    booked = book_one(browser)
    booking_id = booked.url.path.rsplit("/", 1)[1]
    attendance = f"/v1/bookings/{booking_id}/attendance"
    early = ops.post(attendance, json={"attendance": "no_show"})
    assert early.status_code == 422 and "has not started yet" in early.text
    hb = stack[1]
    started = datetime.combine(DAY, time(9, 40), ZoneInfo("America/Chicago")).timestamp()
    hb.set_clock(offset=started - hb.clock.now())
    try:
        refused = api.post(attendance, json={"attendance": "attended"})
        assert refused.status_code == 403  # a booking client is no site
        with httpx.Client(base_url=stack[0], follow_redirects=True, timeout=60) as admin:
            sign_in(admin, keys["provider-admin"])
            day = admin.get("/admin/clinic-p1", params={"day": DAY.isoformat()})
            row = day.text.split(f'data-booking="{booking_id}"')[1].split("</tr>")[0]
            assert "No-show</button>" in row and "Cancel</button>" not in row  # it started
            csrf = fields(day.text)["csrf"]
            marked = admin.post(
                f"/admin/clinic-p1/bookings/{booking_id}",
                data={"csrf": csrf, "day": str(DAY), "action": "no_show"},
            )
            assert marked.status_code == 200, marked.text
            row = marked.text.split(f'data-booking="{booking_id}"')[1].split("</tr>")[0]
            assert "no-show" in row
            fill = admin.get("/admin/clinic-p1/export.csv")
            mine = [
                r for r in csv.DictReader(io.StringIO(fill.text)) if r["booking_id"] == booking_id
            ]
            assert mine[0]["attendance"] == "no_show"
        read = ops.get(f"/v1/bookings/{booking_id}").json()
        assert read["attendance"] == "no_show"
        trail = ops.get("/v1/audit", params={"limit": 1000}).json()
        actions = {(e["action"], e["target"]) for e in trail}
        assert ("booking.attendance", f"booking_id={booking_id}") in actions
    finally:
        hb.set_clock(offset=0)
