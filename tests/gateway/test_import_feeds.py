"""Imports of feeds as real publishers write them (issue 14): sites in several zones,
ZIP+4 codes, two sources with the same ids, day-level slots of varying length, 9-minute
slots, out-of-range capacities, a state filter, and a rolling 3-day feed re-imported on
three consecutive days of the stack's clock. Each feed is written here and served from
a local HTTP server; real stack (Ray, Redis, HTTP)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from gateway.interop.reconcile import normalize_postal_code, provider_id_for

pytestmark = pytest.mark.integration
EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/"
SERVICE_SYSTEM = "http://fhir-registry.smarthealthit.org/CodeSystem/service-type"
DAY = 86_400


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"index_first_day": None, "index_days": 10}


@pytest.fixture(scope="module")
def shard_options() -> dict[str, Any]:
    return {"roll_seconds": 0.2}


class Publisher:
    """A SMART Scheduling Links publisher: files by name, each file's state."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, list[dict[str, Any]]]] = {}  # name -> (state, lines)
        self.requests: list[str] = []

    def manifest(self, base: str, path: str) -> bytes:
        kinds = {"locations": "Location", "schedules": "Schedule", "slots": "Slot"}
        out = [
            {"type": kinds[name.split("-")[0]], "url": f"{base}{path}/{name}",
             "extension": {"state": [state]}}
            for name, (state, _) in sorted(self.files.items())
        ]  # fmt: skip
        return json.dumps({"transactionTime": "now", "request": "", "output": out}).encode()


@pytest.fixture(scope="module")
def publisher() -> Iterator[tuple[str, dict[str, Publisher]]]:
    feeds: dict[str, Publisher] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, name = self.path.rpartition("/")
            feed = feeds.get(path)
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if feed is None:
                self.send_error(404)
                return
            feed.requests.append(name)
            if name == "$bulk-publish":
                body = feed.manifest(base, path)
            elif name in feed.files:
                body = "\n".join(json.dumps(x) for x in feed.files[name][1]).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Cache-Control", "max-age=0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", feeds
    server.shutdown()
    server.server_close()


def location(
    lid: str, state: str, pos: tuple[float, float] | None, zip_code: str
) -> dict[str, Any]:
    loc: dict[str, Any] = {"resourceType": "Location", "id": lid, "name": f"Site {lid}",
                           "address": {"state": state, "postalCode": zip_code}}  # fmt: skip
    if pos is not None:
        loc["position"] = {"latitude": pos[0], "longitude": pos[1]}
    return loc


def schedule(lid: str) -> dict[str, Any]:
    coding = {"system": SERVICE_SYSTEM, "code": "covid19-immunization"}
    return {
        "resourceType": "Schedule",
        "id": f"s-{lid}",
        "actor": [{"reference": f"Location/{lid}"}],
        "serviceType": [{"coding": [coding]}],
    }


def slot(lid: str, n: int, start: datetime, end: datetime, capacity: Any = 5) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": f"{lid}-{n}",
        "schedule": {"reference": f"Schedule/s-{lid}"},
        "status": "free",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "extension": [{"url": EXT + "slot-capacity", "valueInteger": capacity}],
    }


def local_today(hb: Hexbook, tz: str) -> date:
    return datetime.fromtimestamp(hb.clock.seconds(), UTC).astimezone(ZoneInfo(tz)).date()


def at(day: date, hhmm: str, tz: str) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, h, m, tzinfo=ZoneInfo(tz))


def grid(ops: httpx.Client, pid: str) -> list[dict[str, Any]]:
    r = ops.get(f"/v1/providers/{pid}/slots", params={"service": "covid-vaccine"})
    assert r.status_code == 200, r.text
    return list(r.json()["slots"])


def test_zones_from_positions_zip_plus_4_and_offsets_checked(
    publisher: tuple[str, dict[str, Publisher]], stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
) -> None:  # fmt: skip
    base, feeds = publisher
    hb = stack[1]
    day = local_today(hb, "America/New_York") + timedelta(days=2)
    feed = feeds["/zones"] = Publisher()
    sites = {
        # id: (state, position, ZIP, its real zone, the zone its times are written in)
        "sea": ("WA", (47.61, -122.33), "98101", "America/Los_Angeles", "America/Los_Angeles"),
        "den": ("CO", (39.74, -104.99), "80202", "America/Denver", "UTC"),
        "phx": ("AZ", (33.45, -112.07), "85004", "America/Phoenix", "America/Phoenix"),
        "chi": ("IL", (41.88, -87.63), "60602", "America/Chicago", "America/New_York"),
        "nj": ("NJ", None, "8332-3762", "America/New_York", "America/New_York"),
    }
    feed.files["locations-all.ndjson"] = ("US", [location(k, v[0], v[1], v[2])
                                                 for k, v in sites.items()])  # fmt: skip
    feed.files["schedules-all.ndjson"] = ("US", [schedule(k) for k in sites])
    lines = []
    for k, (_, _, _, real, written) in sites.items():
        start = at(day, "09:00", real).astimezone(ZoneInfo(written))
        lines.append(slot(k, 0, start, start + timedelta(minutes=15)))
    feed.files["slots-all.ndjson"] = ("US", lines)
    url = f"{base}/zones/$bulk-publish"
    out = ops.post("/v1/imports", json={"connector": "smart", "url": url}).json()
    assert out["created"] == 5 and out["unplaced"] == [], json.dumps(out)
    # Chicago's times were written at New York's offset: reported, not silently taken.
    assert len(out["errors"]) == 1 and "chi" in out["errors"][0], out["errors"]
    assert "America/Chicago" in out["errors"][0] and "UTC-05:00" in out["errors"][0]
    for k, (_, _, _, real, _) in sites.items():
        pid = provider_id_for(f"smart:{url}", k)
        p = ops.get(f"/v1/providers/{pid}").json()
        assert p["timezone"] == real, (k, p)
        starts = [s["start"] for s in grid(ops, pid)]
        if k != "chi":  # 09:00 local, in the site's own zone
            assert starts == [at(day, "09:00", real).isoformat()], (k, starts)
    nj = ops.get(f"/v1/providers/{provider_id_for(f'smart:{url}', 'nj')}").json()
    assert abs(nj["lat"] - 39.4) < 0.3  # placed at 08332, Millville NJ
    assert normalize_postal_code("8332-3762") == "08332"
    assert normalize_postal_code("083323762") == normalize_postal_code("08332") == "08332"


def test_two_sources_with_the_same_ids_stay_apart(
    publisher: tuple[str, dict[str, Publisher]], stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
) -> None:  # fmt: skip
    base, feeds = publisher
    day = local_today(stack[1], "America/Chicago") + timedelta(days=2)
    made = []
    for name, lat in (("/one", 41.9), ("/two", 41.7)):
        feed = feeds[name] = Publisher()
        feed.files["locations-il.ndjson"] = ("IL", [location("1", "IL", (lat, -87.6), "60602")])
        feed.files["schedules-il.ndjson"] = ("IL", [schedule("1")])
        start = at(day, "10:00", "America/Chicago")
        feed.files["slots-il.ndjson"] = ("IL", [slot("1", 0, start, start + timedelta(minutes=30))])
        r = ops.post(
            "/v1/imports", json={"connector": "smart", "url": f"{base}{name}/$bulk-publish"}
        )
        made += r.json()["providers"]
    assert len(set(made)) == 2, made
    lats = sorted(ops.get(f"/v1/providers/{pid}").json()["lat"] for pid in made)
    assert lats == [41.7, 41.9]  # neither overwrote the other


def test_slot_lengths_are_kept_and_bad_capacities_reported(
    publisher: tuple[str, dict[str, Publisher]], stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client, base: str,
) -> None:  # fmt: skip
    host, feeds = publisher
    tz = "America/Chicago"
    day = local_today(stack[1], tz) + timedelta(days=2)
    feed = feeds["/lengths"] = Publisher()
    feed.files["locations-il.ndjson"] = (
        "IL",
        [
            location("day", "IL", (41.95, -87.65), "60613"),
            location("nine", "IL", (41.96, -87.66), "60613"),
        ],
    )
    feed.files["schedules-il.ndjson"] = ("IL", [schedule("day"), schedule("nine")])
    lines = [
        # Day-level slots of different lengths: 09:00-17:00 (50) and 09:00-13:00 (20).
        slot("day", 0, at(day, "09:00", tz), at(day, "17:00", tz), 50),
        slot("day", 1, at(day + timedelta(days=1), "09:00", tz),
             at(day + timedelta(days=1), "13:00", tz), 20),
        slot("day", 2, at(day + timedelta(days=2), "09:00", tz),
             at(day + timedelta(days=2), "13:00", tz), -3),
        slot("day", 3, at(day + timedelta(days=3), "09:00", tz),
             at(day + timedelta(days=3), "13:00", tz), 10**9),
    ]  # fmt: skip
    lines += [
        slot("nine", i, at(day, "09:00", tz) + timedelta(minutes=9 * i),
             at(day, "09:00", tz) + timedelta(minutes=9 * (i + 1)), 1)
        for i in range(4)
    ]  # fmt: skip
    feed.files["slots-il.ndjson"] = ("IL", lines)
    url = f"{host}/lengths/$bulk-publish"
    out = ops.post("/v1/imports", json={"connector": "smart", "url": url}).json()
    assert out["created"] == 2, out
    bad = sorted(e.split(":")[0] for e in out["errors"])
    assert bad == ["Slot/day-2", "Slot/day-3"], out["errors"]
    assert all("not imported" in e for e in out["errors"])
    day_id, nine_id = (provider_id_for(f"smart:{url}", k) for k in ("day", "nine"))
    assert [(s["start"], s["capacity"]) for s in grid(ops, day_id)] == [
        (at(day, "09:00", tz).isoformat(), 50),
        (at(day + timedelta(days=1), "09:00", tz).isoformat(), 20),
    ]
    # 9-minute slots keep their own starts (not merged onto a 15-minute grid).
    assert [s["start"] for s in grid(ops, nine_id)] == [
        (at(day, "09:00", tz) + timedelta(minutes=9 * i)).isoformat() for i in range(4)
    ]
    # Published back with their own lengths: 17:00 one day, 13:00 the next.
    deadline = time.monotonic() + 20
    while True:
        manifest = httpx.get(f"{base}/smart/$bulk-publish").json()
        lines_out = [
            json.loads(x)
            for f in manifest["output"]
            if f["type"] == "Slot"
            for x in httpx.get(f["url"]).text.splitlines()
            if day_id.split("-")[-1] in x
        ]
        ends = sorted(x["end"] for x in lines_out if "day" in x["schedule"]["reference"])
        if len(ends) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert ends == [
        at(day, "17:00", tz).isoformat(),
        at(day + timedelta(days=1), "13:00", tz).isoformat(),
    ]


def test_a_state_filter_reads_only_that_states_files(
    publisher: tuple[str, dict[str, Publisher]], stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
) -> None:  # fmt: skip
    host, feeds = publisher
    day = local_today(stack[1], "America/New_York") + timedelta(days=2)
    feed = feeds["/states"] = Publisher()
    states = (
        ("NJ", "nj1", (40.22, -74.76), "08608", "America/New_York"),
        ("WA", "wa1", (47.25, -122.44), "98402", "America/Los_Angeles"),
    )
    for state, lid, pos, zip_code, tz in states:
        feed.files[f"locations-{state}.ndjson"] = (state, [location(lid, state, pos, zip_code)])
        feed.files[f"schedules-{state}.ndjson"] = (state, [schedule(lid)])
        start = at(day, "09:00", tz)
        feed.files[f"slots-{state}.ndjson"] = (
            state,
            [slot(lid, 0, start, start + timedelta(minutes=15))],
        )
    url = f"{host}/states/$bulk-publish"
    out = ops.post("/v1/imports", json={"connector": "smart", "url": url, "states": ["NJ"]}).json()
    assert out["created"] == 1 and out["providers"] == [provider_id_for(f"smart:{url}", "nj1")]
    assert not [name for name in feed.requests if "WA" in name], feed.requests


def one_site_feed(
    publisher: tuple[str, dict[str, Publisher]], name: str, site: str, position: tuple[float, float]
) -> tuple[Publisher, str, str]:
    """A SMART feed at /``name`` of one Illinois site: the publisher, its URL and the
    provider id an import gives the site."""
    host, feeds = publisher
    feed = feeds[f"/{name}"] = Publisher()
    feed.files["locations-il.ndjson"] = ("IL", [location(site, "IL", position, "60615")])
    feed.files["schedules-il.ndjson"] = ("IL", [schedule(site)])
    url = f"{host}/{name}/$bulk-publish"
    return feed, url, provider_id_for(f"smart:{url}", site)


def test_a_rolling_feed_imported_on_three_days(
    publisher: tuple[str, dict[str, Publisher]], stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client, api: httpx.Client,
) -> None:  # fmt: skip
    hb = stack[1]
    tz = "America/Chicago"
    feed, url, pid = one_site_feed(publisher, "rolling", "r", (41.80, -87.60))
    booking: dict[str, Any] = {}
    try:
        for n in range(3):
            hb.set_clock(offset=n * DAY)
            today = local_today(hb, tz)
            # The publisher offers today and the next two days: 09:00-10:00, 4 x 15 min.
            quarter = timedelta(minutes=15)
            offered = []
            for d in range(3):
                nine = at(today + timedelta(days=d), "09:00", tz)
                offered += [
                    slot("r", d * 10 + i, nine + i * quarter, nine + (i + 1) * quarter, 3)
                    for i in range(4)
                ]
            feed.files["slots-il.ndjson"] = ("IL", offered)
            out = ops.post("/v1/imports", json={"connector": "smart", "url": url, "force": True})
            out = out.json()
            assert out["conflicts"] == [] and out["errors"] == [], out
            newest = today + timedelta(days=2)
            starts = {s["start"][:10] for s in grid(ops, pid) if s["capacity"] == 3}
            assert f"{newest}" in starts, (n, sorted(starts))  # the new day's places are in
            if n == 0:
                first = next(
                    s["start"]
                    for s in grid(ops, pid)
                    if s["start"].startswith(f"{today + timedelta(days=1)}")
                )
                hold = api.post(
                    "/v1/holds",
                    json={"provider_id": pid, "service": "covid-vaccine", "start": first},
                ).json()
                booking = api.post(
                    "/v1/bookings",
                    json={"hold_id": hold["hold_id"], "patient": {"reference": "roll"}},
                ).json()

        # Days that passed left the calendar (the shard rolls them out); the booking of
        # day 1 is still there: day 1 is yesterday now, and the feed still offered it.
        def rolled() -> bool:
            days = {s["start"][:10] for s in grid(ops, pid)}
            return min(days) >= f"{local_today(hb, tz) - timedelta(days=1)}"

        deadline = time.monotonic() + 30
        while not rolled():
            assert time.monotonic() < deadline, sorted({s["start"][:10] for s in grid(ops, pid)})
            time.sleep(0.2)
        read = api.get(
            f"/v1/bookings/{booking['booking_id']}",
            headers={"X-Booking-Token": booking["booking_token"]},
        )
        assert read.status_code == 200 and read.json()["status"] == "active", read.text
    finally:
        hb.set_clock(offset=0)


def test_a_window_that_moves_during_an_import_gets_the_capacity_placed_on_it_anew(
    publisher: tuple[str, dict[str, Publisher]], stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The shard's daily roll (or another import's extension) may move a calendar's
    window between an import's read of it and its new capacity: the capacity, placed
    against the old window, is refused, and the import places it again on the new one."""
    hb = stack[1]
    tz = "America/Chicago"
    feed, url, pid = one_site_feed(publisher, "moving", "m", (41.81, -87.61))
    today = local_today(hb, tz)
    quarter = timedelta(minutes=15)

    def offer(places: int) -> None:
        nine = at(today + timedelta(days=1), "09:00", tz)
        feed.files["slots-il.ndjson"] = ("IL", [
            slot("m", i, nine + i * quarter, nine + (i + 1) * quarter, places) for i in range(4)
        ])  # fmt: skip

    offer(2)
    made = ops.post("/v1/imports", json={"connector": "smart", "url": url, "force": True})
    assert made.json()["created"] == 1, made.text
    # The next import's capacity reaches the shard just after the window moved on.
    real, moved = hb.set_capacity, []

    def set_capacity_after_a_move(p: str, service: str, *args: Any, **kw: Any) -> Any:
        if not moved:
            g = hb.slots(p, service)
            hb.extend(p, service, g["start"] + (len(g["capacity"]) + 96) * g["slot_seconds"])
            moved.append(p)
        return real(p, service, *args, **kw)

    monkeypatch.setattr(hb, "set_capacity", set_capacity_after_a_move)
    offer(3)
    out = ops.post("/v1/imports", json={"connector": "smart", "url": url, "force": True}).json()
    assert moved == [pid]
    assert out["errors"] == [] and out["conflicts"] == [] and out["updated"] == 1, out
    assert {s["capacity"] for s in grid(ops, pid) if s["capacity"]} == {3}
