"""The pages in real Chromium (Debian's, driven by Playwright): a patient books and
cancels, the dashboard follows a booking made through the API, a provider-admin edits a
template, a booking-client key stays out of the admin. axe-core runs on every page (no
serious or critical violation), and each page is photographed at desktop and phone
widths (``make docs-images`` writes them to docs/img/pages/)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from tests.browser import SHOTS, axe_problems, page, screenshots
from tests.dates import ahead
from tests.gateway.sites import put_day_site
from tests.polling import until

SERVICE = "covid-vaccine"
DAY = ahead(4)
PAGES = ("find", "book", "hold", "booking", "waitlist", "room", "signin", "dashboard", "admin",
         "site", "refused")  # fmt: skip


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"index_first_day": None, "index_days": 20}


@pytest.fixture(scope="module")
def sites(stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client) -> str:
    """Three sites near 60614 open on DAY; the stack's address."""
    for i, (lat, lng) in enumerate(((41.925, -87.650), (41.930, -87.640), (41.915, -87.655))):
        put_day_site(ops, f"clinic-b{i}", SERVICE, DAY, lat=lat, lng=lng, capacity=2,
                     closes="11:00")  # fmt: skip
    params = {"lat": 41.9229, "lng": -87.6483, "service": SERVICE}
    until(lambda: len(ops.get("/v1/search", params=params).json()["results"]) == 3)
    return stack[0]


def checked(p: Any, name: str, out: Path) -> None:
    """axe-core finds nothing serious on the page; then its screenshots."""
    assert axe_problems(p) == [], name
    screenshots(p, name, out)


def sign_in(p: Any, base: str, key: str) -> None:
    p.goto(f"{base}/signin")
    p.get_by_label("API key").fill(key)
    p.get_by_role("button", name="Sign in").click()
    p.wait_for_load_state()


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_a_patient_finds_books_and_cancels_a_place(
    sites: str, ops: httpx.Client, tmp_path: Path, javascript: bool
) -> None:
    base = sites
    with page(java_script_enabled=javascript) as p:
        p.goto(f"{base}/")
        if javascript:
            checked(p, "find-empty", tmp_path)
        p.get_by_label("Address, postal code or place").fill("60614")
        p.get_by_role("button", name="Search").click()
        p.wait_for_selector(".results .site")
        assert p.locator(".hexmap polygon").count() >= 1
        if javascript:
            checked(p, "find", tmp_path)
        p.locator(".slot").first.click()
        p.wait_for_selector("text=Hold this place")
        if javascript:
            checked(p, "book", tmp_path)
        p.get_by_role("button", name="Hold this place").click()
        p.wait_for_selector("text=Confirm the booking")
        if javascript:
            checked(p, "hold", tmp_path)
        p.get_by_label("E-mail (for the confirmation, optional)").fill("chromium@example.org")
        p.get_by_role("button", name="Confirm the booking").click()
        p.wait_for_selector("h1:has-text('Your appointment is booked')")
        if javascript:
            checked(p, "booking", tmp_path)
        booking_id = p.url.split("/booking/")[1].split("?")[0]
        token = re.search(r"token=([^&]+)", p.url)
        assert token is not None
        api = ops.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token.group(1)})
        assert api.json()["status"] == "active"
        assert api.json()["patient"]["contact"]["email"] == "chromium@example.org"
        p.get_by_role("button", name="Cancel the appointment").click()
        p.wait_for_selector(".status:has-text('cancelled')")
    api = ops.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token.group(1)})
    assert api.json()["status"] == "cancelled"


def test_use_my_location_spanish_and_the_waitlist(sites: str, tmp_path: Path) -> None:
    where = {"latitude": 41.9229, "longitude": -87.6483}
    with page(geolocation=where, permissions=["geolocation"]) as p:
        p.goto(f"{sites}/")
        p.get_by_role("button", name="Use my location").click()
        p.wait_for_selector(".results .site")
        assert "lat=41.92290" in p.url and p.locator(".results .site").count() == 3
        p.goto(f"{sites}/?q=60614&lang=es")
        p.wait_for_selector("text=Lugares cercanos")
        assert p.locator("html").get_attribute("lang") == "es"
        checked(p, "find-es", tmp_path)
        p.get_by_role("link", name="English").click()
        p.wait_for_selector("text=Places nearby")
        p.get_by_role("button", name="Join the waitlist").click()
        p.wait_for_selector("text=Tell me when a place frees up")
        checked(p, "waitlist", tmp_path)
        p.get_by_role("button", name="Leave the waitlist").click()
        p.wait_for_selector("text=Find a vaccination appointment")


def test_a_waiting_room_queues_the_patient_then_lets_them_hold(
    sites: str, ops: httpx.Client, tmp_path: Path
) -> None:
    """A room covers a site: the slot page sends the patient to its line; let in, they
    come back to their slot and hold it with the admission (kept in a cookie)."""
    starts = put_day_site(ops, "clinic-room", "flu-vaccine", DAY, lat=41.80, lng=-87.60)
    room = {"room_id": "flu-launch", "service": "flu-vaccine", "lat": 41.80, "lng": -87.60,
            "radius_km": 2, "per_minute": 600,
            "opens_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    assert ops.post("/v1/rooms", json=room).status_code == 201
    assert ops.patch("/v1/rooms/flu-launch", json={"state": "paused"}).status_code == 200
    try:
        with page() as p:
            p.goto(
                f"{sites}/book?"
                + urlencode(
                    {"provider_id": "clinic-room", "service": "flu-vaccine", "start": starts[0]}
                )
            )
            p.get_by_role("button", name="Join the waiting room").click()
            p.wait_for_selector("h1:has-text('Waiting room')")
            assert p.locator(".position").inner_text() == "1"
            checked(p, "room", tmp_path)
            ops.patch("/v1/rooms/flu-launch", json={"state": "open"})

            def let_in() -> bool:  # the page refreshes itself; a test does not wait 60 s
                p.reload()
                return "Hold this place" in p.content()

            until(let_in, 30)
            p.get_by_role("button", name="Hold this place").click()
            p.wait_for_selector("text=Confirm the booking")
        slots = ops.get("/v1/providers/clinic-room/slots", params={"service": "flu-vaccine"})
        assert slots.json()["slots"][0]["remaining"] == 0  # held with the admission
    finally:
        ops.patch("/v1/rooms/flu-launch", json={"state": "closed"})


def test_the_dashboard_shows_a_booking_made_through_the_api_within_2_s(
    sites: str, keys: dict[str, str], api: httpx.Client, tmp_path: Path
) -> None:
    with page() as p:
        sign_in(p, sites, keys["operator"])
        assert p.url.endswith("/dashboard")
        p.wait_for_function(
            "() => document.querySelector('[data-stat=at]').textContent !== 'now'", timeout=10_000
        )  # the live feed is on
        checked(p, "dashboard", tmp_path)
        booked = int(p.locator("[data-stat='per_minute.bookings']").inner_text())
        left = int(p.locator("[data-stat='places_left']").inner_text())
        start = api.get("/v1/providers/clinic-b2/slots", params={"service": SERVICE}).json()
        hold = api.post("/v1/holds", json={"provider_id": "clinic-b2", "service": SERVICE,
                                           "start": start["slots"][-1]["start"]})  # fmt: skip
        assert hold.status_code == 201, hold.text
        made = api.post("/v1/bookings", json={"hold_id": hold.json()["hold_id"],
                                              "patient": {"reference": "dash-1"}})  # fmt: skip
        assert made.status_code == 201, made.text
        p.wait_for_function(
            f"() => +document.querySelector(\"[data-stat='per_minute.bookings']\").textContent"
            f" >= {booked + 1} && +document.querySelector(\"[data-stat='places_left']\")"
            f".textContent <= {left - 1}",
            timeout=2_000,
        )


def test_a_provider_admin_edits_the_template_and_sees_the_new_slots(
    sites: str, keys: dict[str, str], ops: httpx.Client, tmp_path: Path
) -> None:
    weekday = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
               "Sunday")[DAY.weekday()]  # fmt: skip
    with page() as p:
        sign_in(p, sites, keys["provider-admin"])
        assert p.url.endswith("/admin")
        checked(p, "admin", tmp_path)
        p.get_by_role("link", name="Clinic clinic-b1").click()
        p.wait_for_selector("text=Weekly template")
        checked(p, "site", tmp_path)
        p.get_by_label(weekday, exact=True).fill("14:00-15:00/4")
        p.get_by_label("Slot length (minutes)").fill("20")
        p.get_by_role("button", name="Preview the slots").click()
        p.wait_for_selector(f"h4:has-text('{DAY.isoformat()} (3 slots, 12 places)')")
        before = ops.get("/v1/providers/clinic-b1/slots", params={"service": SERVICE}).json()
        assert before["slot_minutes"] == 15  # a preview changes nothing
        p.get_by_role("button", name="Save the template").click()
        p.wait_for_url(re.compile(r"saved=1"))
    after = ops.get("/v1/providers/clinic-b1/slots", params={"service": SERVICE}).json()
    on_day = [s for s in after["slots"] if s["start"].startswith(DAY.isoformat())]
    assert [(s["start"][11:16], s["capacity"]) for s in on_day] == [
        ("14:00", 4), ("14:20", 4), ("14:40", 4)
    ]  # fmt: skip


def test_a_booking_client_key_cannot_open_the_admin_pages(
    sites: str, keys: dict[str, str], tmp_path: Path
) -> None:
    with page() as p:
        p.goto(f"{sites}/signin")
        checked(p, "signin", tmp_path)
        sign_in(p, sites, keys["booking-client"])
        nav = p.get_by_role("navigation").inner_text()
        assert "Site admin" not in nav and "Dashboard" not in nav
        for path in ("/admin", "/admin/clinic-b0", "/dashboard"):
            answer = p.goto(f"{sites}{path}")
            assert answer is not None and answer.status == 403, path
            assert "may not open this page" in p.locator(".problem").inner_text()
        checked(p, "refused", tmp_path)


def test_the_find_and_book_path_works_from_the_keyboard(sites: str) -> None:
    """Tab to the first slot (the focus ring shows where), Enter, then Enter on the
    hold button: no mouse."""
    with page() as p:
        p.goto(f"{sites}/?q=60614")
        p.wait_for_selector(".results .site")
        for _ in range(40):
            p.keyboard.press("Tab")
            if p.evaluate("() => document.activeElement.classList.contains('slot')"):
                break
        else:
            raise AssertionError("no slot is reachable with Tab")
        ring = p.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert ring not in ("none", ""), ring
        p.keyboard.press("Enter")
        p.wait_for_selector("text=Hold this place")
        p.get_by_role("button", name="Hold this place").focus()
        p.keyboard.press("Enter")
        p.wait_for_selector("text=Confirm the booking")
        assert "/hold/" in p.url


def test_every_page_has_its_screenshots_in_the_docs() -> None:
    """``make docs-images`` made them; a page added here needs its pictures there."""
    missing = [
        f"{name}-{width}.png"
        for name in PAGES
        for width in ("desktop", "phone")
        if not (SHOTS / f"{name}-{width}.png").is_file()
    ]
    assert missing == [], "run make docs-images: " + ", ".join(missing)
