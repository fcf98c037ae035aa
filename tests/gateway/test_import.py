"""Importing a SMART Scheduling Links feed through a running gateway: the example feed
(served from a local HTTP server, its dates moved into the coming weeks) creates ten
searchable, bookable providers; polling honours ETag and max-age; a re-import that
lowers capacity keeps the confirmed booking and reports the conflict."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.interop.reconcile import provider_id_for

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "smart-scheduling-links"
PUBLIC = "https://raw.githubusercontent.com/smart-on-fhir/smart-scheduling-links/master/examples/"
_INSTANT = re.compile(r'"(start|end)":"([0-9T:.\-]+Z)"')


class Feed:
    """The example feed, served with its dates shifted and its capacity adjustable."""

    def __init__(self, index_start: int) -> None:
        # Move the feed's first day onto the first day the gateway's search index covers.
        first = datetime(2021, 3, 1, tzinfo=UTC)
        self.shift = timedelta(days=(datetime.fromtimestamp(index_start, UTC) - first).days)
        self.capacity = 100
        self.etag = '"v1"'
        self.max_age = 3600
        self.requests: list[tuple[str, dict[str, str]]] = []

    def body(self, name: str, base: str) -> bytes | None:
        path = FIXTURE / name
        if not path.is_file():
            return None
        text = path.read_text().replace(PUBLIC, base)
        if name.startswith("slots-"):

            def move(m: re.Match[str]) -> str:
                t = datetime.fromisoformat(m.group(2).replace("Z", "+00:00")) + self.shift
                return f'"{m.group(1)}":"{t.strftime("%Y-%m-%dT%H:%M:%S.000Z")}"'

            text = _INSTANT.sub(move, text).replace(
                '"valueInteger":100}', f'"valueInteger":{self.capacity}}}'
            )
        return text.encode()


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"import_tick_seconds": 0.2}  # scheduled imports looked at five times a second


@pytest.fixture(scope="module")
def feed(stack: Any) -> Iterator[tuple[str, Feed]]:
    state = Feed(stack[2].state.runtime.index.start)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.split("?", 1)[0].lstrip("/").replace("%24", "$")
            state.requests.append((self.path, dict(self.headers)))
            base = f"http://127.0.0.1:{self.server.server_address[1]}/"
            body = state.body(name, base)
            if body is None:
                self.send_error(404)
                return
            if name == "$bulk-publish" and self.headers.get("If-None-Match") == state.etag:
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            if name == "$bulk-publish":
                self.send_header("ETag", state.etag)
                self.send_header("Cache-Control", f"max-age={state.max_age}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/$bulk-publish", state
    server.shutdown()
    server.server_close()


def test_example_feed_imports_and_books_and_reimport_keeps_bookings(
    feed: tuple[str, Feed], ops: httpx.Client, api: httpx.Client
) -> None:
    url, state = feed
    r = ops.post("/v1/imports", json={"connector": "smart", "url": url, "states": ["MA"]})
    assert r.status_code == 200, r.text
    out = r.json()
    # Ten sites, none with a position: each placed at its postal code's centroid.
    assert out["created"] == 10 and out["unplaced"] == [] and out["errors"] == []
    assert len(out["providers"]) == 10 and all(p.startswith("smart-") for p in out["providers"])
    boston = ops.get(f"/v1/providers/{out['providers'][0]}").json()
    assert boston["services"] == ["covid-vaccine"]
    assert abs(boston["lat"] - 42.36) < 0.5 and abs(boston["lng"] + 71.06) < 0.5  # 02114
    # A day-long slot of 100 is one slot with 100 places at its start.
    first_day = (datetime(2021, 3, 1, 14, tzinfo=UTC) + state.shift).isoformat()
    slots = ops.get(
        f"/v1/providers/{out['providers'][0]}/slots", params={"service": "covid-vaccine"}
    )
    grid = slots.json()["slots"]
    assert grid[0]["capacity"] == 100
    assert datetime.fromisoformat(grid[0]["start"]) == datetime.fromisoformat(first_day)

    # Searchable (once the index has read the new calendars off the stream) and bookable.
    deadline = time.monotonic() + 15
    while True:
        found = api.get(
            "/v1/search",
            params={"lat": 42.36, "lng": -71.06, "radius_km": 5, "service": "covid-vaccine"},
        )
        assert found.status_code == 200
        ids = [p["provider_id"] for p in found.json()["results"]]
        if out["providers"][0] in ids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out["providers"][0] in ids, found.json()
    hold = api.post(
        "/v1/holds",
        json={
            "provider_id": out["providers"][0],
            "service": "covid-vaccine",
            "start": grid[0]["start"],
        },
    )
    assert hold.status_code == 201, hold.text
    booked = api.post(
        "/v1/bookings", json={"hold_id": hold.json()["hold_id"], "patient": {"reference": "p1"}}
    )
    assert booked.status_code == 201, booked.text

    # Polling: within max-age nothing is fetched; forced, the ETag gives a 304.
    again = ops.post("/v1/imports", json={"connector": "smart", "url": url})
    assert again.json()["fetched"] is False and "max-age" in again.json()["note"]
    forced = ops.post("/v1/imports", json={"connector": "smart", "url": url, "force": True})
    assert forced.json()["fetched"] is True  # forced: no If-None-Match, a full read
    assert forced.json()["unchanged"] == 10 and forced.json()["conflicts"] == []

    # The source lowers every day to zero places: the booking stays, its slot shows no
    # free place, and the conflict is reported for exactly that slot.
    state.capacity = 0
    state.etag = '"v2"'
    lowered = ops.post("/v1/imports", json={"connector": "smart", "url": url, "force": True}).json()
    assert lowered["updated"] == 10
    assert len(lowered["conflicts"]) == 1 and out["providers"][0] in lowered["conflicts"][0]
    after = ops.get(
        f"/v1/providers/{out['providers'][0]}/slots", params={"service": "covid-vaccine"}
    ).json()["slots"]
    assert after[0]["capacity"] == 1 and after[0]["remaining"] == 0
    bid = booked.json()["booking_id"]
    assert ops.get(f"/v1/bookings/{bid}").json()["status"] == "active"


def test_import_refuses_bad_input(ops: httpx.Client, api: httpx.Client) -> None:
    bad = ops.post("/v1/imports", json={"connector": "ftp", "url": "http://x.example/feed"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem")
    nothing = ops.post("/v1/imports", json={"connector": "smart", "url": "http://127.0.0.1:9/x"})
    assert nothing.status_code == 422, nothing.text
    assert "cannot fetch" in json.dumps(nothing.json())
    assert (
        api.post("/v1/imports", json={"connector": "smart", "url": "http://a.b/c"}).status_code
        == 403
    )


def test_import_cli_prints_the_summary_and_exit_status(
    feed: tuple[str, Feed], stack: Any, keys: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    url, _ = feed
    gateway = stack[0]
    # After the test above, the feed still offers zero places where one is booked:
    # nothing changes, but the standing conflict is reported again, and exit status 1
    # says something needs the operator's eye.
    code = main(["import", "smart", url, "--url", gateway, "--key", keys["operator"], "--force"])
    out = capsys.readouterr().out
    assert out.startswith("created 0, updated 0, unchanged 10, unplaced 0, conflicts 1, errors 0")
    assert "kept them, no place free" in out
    assert code == 1
    assert main(["import", "smart", url, "--url", gateway, "--key", ""]) == 2
    assert "operator key" in capsys.readouterr().err
    assert main(["import", "smart", url, "--url", gateway, "--key", keys["booking-client"]]) == 2
    assert "403" in capsys.readouterr().err


def test_fhir_bundle_imports_the_same_sites(feed: tuple[str, Feed], ops: httpx.Client) -> None:
    """The example resources as one FHIR R4 Bundle (as a file would carry them)."""
    _, state = feed
    entries = []
    for name in ("locations.ndjson", "schedules.ndjson", "slots-2021-W09.ndjson"):
        body = state.body(name, "http://unused/")
        assert body is not None
        entries += [{"resource": json.loads(line)} for line in body.decode().splitlines() if line]
    entries.append({"resource": {"resourceType": "Patient", "id": "x"}})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    r = ops.post(
        "/v1/imports",
        json={"connector": "fhir", "content": json.dumps(bundle), "source": "bundle.json"},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["created"] == 10 and all(p.startswith("fhir-") for p in out["providers"])
    assert out["errors"] == [f"entry {len(entries)}: Patient is not read"]
    not_bundle = ops.post("/v1/imports", json={"connector": "fhir", "content": "{}"})
    assert not_bundle.status_code == 422 and "Bundle" in not_bundle.text


CSV = """id,name,lat,lng,postal_code,timezone,services,weekdays,opens,closes,capacity,first_day,days
gym,High School Gym,41.90,-87.65,,America/Chicago,covid-vaccine,mon tue,09:00,12:00,4,{d},7
gym,High School Gym,,,,,,mon tue,13:00,17:00,2,{d},7
bad-lat,Nowhere,123,-87.6,,America/Chicago,covid-vaccine,,09:00,12:00,2,{d},7
,No id,41.9,-87.6,,,,,09:00,10:00,1,{d},7
library,Library,,,60614,,covid-vaccine flu-vaccine,sat,10:00,14:00,3,{d},7
hours,Backwards,41.95,-87.70,,America/Chicago,,,17:00,09:00,2,{d},7
gym,High School Gym,,,,,,funday,09:00,10:00,1,{d},7
unplaceable,Somewhere,,,,,covid-vaccine,,09:00,10:00,1,{d},7
"""


def test_csv_imports_good_rows_and_reports_bad_ones_by_line(
    ops: httpx.Client,
    stack: Any,
    tmp_path: Path,
    keys: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first_day = datetime.fromtimestamp(stack[2].state.runtime.index.start, UTC).date()
    text = CSV.format(d=first_day.isoformat())
    r = ops.post("/v1/imports", json={"connector": "csv", "content": text, "source": "sites.csv"})
    assert r.status_code == 200, r.text
    out = r.json()
    gym_id, library_id = (provider_id_for("csv:sites.csv", site) for site in ("gym", "library"))
    assert sorted(out["providers"]) == sorted([gym_id, library_id])
    assert gym_id.startswith("csv-sites.csv-") and gym_id.endswith("-gym")
    assert [e.split(":")[0] for e in out["errors"]] == ["line 4", "line 5", "line 7", "line 8"]
    assert "latitude" in out["errors"][0] and "closes before it opens" in out["errors"][2]
    assert "funday" in out["errors"][3]
    assert len(out["unplaced"]) == 1 and out["unplaced"][0].startswith("unplaceable")
    library = ops.get(f"/v1/providers/{library_id}").json()
    assert library["services"] == ["covid-vaccine", "flu-vaccine"]  # placed at 60614
    assert abs(library["lat"] - 41.92) < 0.1 and library["timezone"] == "America/Chicago"
    gym = ops.get(f"/v1/providers/{gym_id}/slots", params={"service": "covid-vaccine"}).json()
    # Two windows on Monday and Tuesday: 12 quarter hours of 4 and 16 of 2 each day.
    monday_tuesday = sum(s["capacity"] for s in gym["slots"])
    assert monday_tuesday == 2 * (12 * 4 + 16 * 2)
    # The same file through the CLI, from disk: nothing changes, bad rows reported again.
    from gateway.cli import main

    path = tmp_path / "sites.csv"
    path.write_text(text)
    code = main(["import", "csv", str(path), "--url", stack[0], "--key", keys["operator"]])
    printed = capsys.readouterr().out
    assert code == 1 and "unchanged 2" in printed and "errors: line 5: no id" in printed


def _wait(ops: httpx.Client, schedule_id: str, until: Any, seconds: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        r = ops.get(f"/v1/imports/schedules/{schedule_id}")
        assert r.status_code == 200, r.text
        if until(r.json()) or time.monotonic() > deadline:
            return dict(r.json())
        time.sleep(0.1)


def test_import_schedule_runs_by_itself_polls_politely_and_stops_when_deleted(
    feed: tuple[str, Feed], ops: httpx.Client, api: httpx.Client
) -> None:
    url, state = feed
    url += "?scheduled=1"  # its own fetch state, apart from the tests above
    spec = {"connector": "smart", "url": url, "every_seconds": 1, "states": ["MA"]}
    try:
        state.max_age = 0  # the source allows a fetch every time: the ETag decides
        r = ops.post("/v1/imports/schedules", json=spec)
        assert r.status_code == 201, r.text
        sid = r.json()["schedule_id"]
        assert sid in [s["schedule_id"] for s in ops.get("/v1/imports/schedules").json()]
        first = _wait(ops, sid, lambda s: s["runs"] >= 1)
        assert first["failures"] == 0 and first["last_error"] is None
        result = first["last_result"]
        assert result["fetched"] is True and result["errors"] == []
        assert result["created"] + result["updated"] + result["unchanged"] == 10
        pid = sorted(result["providers"])[0]

        # Unchanged source: later runs send If-None-Match and get a 304; nothing is read.
        later = _wait(ops, sid, lambda s: s["runs"] >= 3)
        assert later["last_result"]["fetched"] is False and "304" in later["last_result"]["note"]
        manifests = [h for p, h in state.requests if "scheduled=1" in p]
        assert manifests[-1].get("If-None-Match") == state.etag
        assert later["next_run_at"] - later["last_run_at"] == pytest.approx(1, abs=0.5)

        # The source changes: the schedule brings the change in with nobody calling.
        state.capacity, state.etag = 7, '"v-scheduled"'
        deadline = time.monotonic() + 20
        # (Its own providers: another URL is another source, so other provider ids; they
        # were made while the feed offered 0 places, so their grid lists no slot yet.)
        while time.monotonic() < deadline:
            slots = ops.get(f"/v1/providers/{pid}/slots", params={"service": "covid-vaccine"})
            grid = slots.json()["slots"]
            if grid and grid[0]["capacity"] == 7:
                break
            time.sleep(0.1)
        assert slots.json()["slots"][0]["capacity"] == 7
        assert _wait(ops, sid, lambda s: s["failures"] > 0, seconds=0)["failures"] == 0

        # Deleted: no more runs.
        assert ops.delete(f"/v1/imports/schedules/{sid}").status_code == 204
        time.sleep(0.5)  # a run under way finishes
        seen = len([p for p, _ in state.requests if "scheduled=1" in p])
        time.sleep(1.5)
        assert len([p for p, _ in state.requests if "scheduled=1" in p]) == seen
        gone = ops.get(f"/v1/imports/schedules/{sid}")
        assert gone.status_code == 404 and "no import schedule" in gone.json()["detail"]
    finally:
        state.capacity, state.etag, state.max_age = 0, '"v2"', 3600


def test_import_schedule_keeps_a_failed_run_and_runs_once_among_gateways(
    stack: Any, ops: httpx.Client, api: httpx.Client
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gateway.interop.schedules import ImportScheduler

    hb = stack[1]
    spec = {"connector": "csv", "url": "http://127.0.0.1:9/sites.csv", "every_seconds": 3600}
    sid = ops.post("/v1/imports/schedules", json=spec).json()["schedule_id"]
    # The gateway's own scheduler and two more (as other gateways) race for the due run.
    others = [ImportScheduler(hb, lambda placed: None) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        ran = [r for rs in pool.map(lambda s: s.run_due(), others) for r in rs]
    record = _wait(ops, sid, lambda s: s["runs"] >= 1)
    time.sleep(0.6)  # three more ticks of the gateway's scheduler
    record = ops.get(f"/v1/imports/schedules/{sid}").json()
    assert record["runs"] == 1 and record["failures"] == 1, record
    assert ran in ([], [sid])
    assert "cannot fetch" in record["last_error"] and record["last_result"] is None
    assert record["next_run_at"] == pytest.approx(record["last_run_at"] + 3600, abs=5)
    assert ops.get("/healthz").status_code == 200
    assert ops.delete(f"/v1/imports/schedules/{sid}").status_code == 204

    # Bad schedules are refused with a problem, and only operators may make them.
    bad = [
        {**spec, "every_seconds": 0},
        {"connector": "csv", "every_seconds": 60},
        {**spec, "content": "id,name"},
        {**spec, "timezone": "Mars/Olympus"},
    ]
    for body in bad:
        r = ops.post("/v1/imports/schedules", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert api.post("/v1/imports/schedules", json=spec).status_code == 403
    assert api.get("/v1/imports/schedules").status_code == 403
    assert ops.delete("/v1/imports/schedules/000000000000").status_code == 404


def test_import_schedules_from_the_cli(
    stack: Any, keys: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    where = ["--url", stack[0], "--key", keys["operator"]]
    source = "http://127.0.0.1:9/sites.csv"
    assert main(["import", "csv", source, "--every", "2h", *where]) == 0
    made = capsys.readouterr().out
    assert made.startswith("schedule ") and "every 7200 s" in made
    sid = made.split()[1].rstrip(":")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert main(["import-schedules", "list", *where]) == 0
        listed = capsys.readouterr().out
        row = next(line for line in listed.splitlines() if line.startswith(sid))
        if "never" not in row:
            break
        time.sleep(0.2)
    assert "7200s" in row and source in row and "error: cannot fetch" in listed
    assert main(["import-schedules", "delete", sid, *where]) == 0
    assert main(["import-schedules", "delete", sid, *where]) == 2
    assert "404" in capsys.readouterr().err
    path = tmp_path / "sites.csv"
    path.write_text("id,name\n")
    assert main(["import", "csv", str(path), "--every", "1h", *where]) == 2
    assert "needs a URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main(["import", "csv", source, "--every", "soon", *where])
    assert bad.value.code == 2 and "not a duration" in capsys.readouterr().err
