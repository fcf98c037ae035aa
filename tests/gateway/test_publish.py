"""The SMART Scheduling Links feed hexbook publishes: valid FHIR R4 with offsets, free
places that match the shards, cached with ETags and re-rendered only where something
changed; and a round trip: the feed read by hexbook's own SMART connector into a second,
empty hexbook gives the same providers and the same free capacity."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.slot import Slot

from actors.api import Hexbook
from actors.embedded_redis import EmbeddedRedis
from gateway.app import create_app
from gateway.interop.reconcile import provider_id_for
from gateway.keys import KeyStore
from gateway.settings import Settings

pytestmark = pytest.mark.integration
OFFSET = re.compile(r"(Z|[+-]\d\d:\d\d)$")
MODELS = {"Location": Location, "Schedule": Schedule, "Slot": Slot}


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"smart_refresh_seconds": 0}


def read_feed(client: httpx.Client, state: str | None = None) -> dict[str, list[dict[str, Any]]]:
    params = {"state": state} if state else {}
    manifest = client.get("/smart/$bulk-publish", params=params)
    assert manifest.status_code == 200, manifest.text
    out: dict[str, list[dict[str, Any]]] = {"Location": [], "Schedule": [], "Slot": []}
    for entry in manifest.json()["output"]:
        r = client.get(entry["url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/fhir+ndjson"
        )
        out[entry["type"]] += [json.loads(line) for line in r.text.splitlines() if line]
    return out


def located(feed: dict[str, list[dict[str, Any]]], prefix: str = "") -> dict[str, Any]:
    """Location id without ``prefix`` -> its position."""
    return {loc["id"].removeprefix(prefix): loc["position"] for loc in feed["Location"]}


def day_slots(
    feed: dict[str, list[dict[str, Any]]], prefix: str = ""
) -> dict[tuple[str, str, str], int]:
    """(location id without ``prefix``, service, slot start) -> free places."""
    schedule_of = {
        s["id"]: (
            s["actor"][0]["reference"].split("/")[1],
            s["serviceType"][0]["coding"][0]["code"],
        )
        for s in feed["Schedule"]
    }
    out = {}
    for s in feed["Slot"]:
        loc, service = schedule_of[s["schedule"]["reference"].split("/")[1]]
        cap = next(e["valueInteger"] for e in s["extension"] if e["url"].endswith("slot-capacity"))
        start = datetime.fromisoformat(s["start"]).isoformat()
        out[(loc.removeprefix(prefix), service, start)] = cap
    return out


def test_feed_is_valid_fhir_and_matches_the_shards(
    base: str, ops: httpx.Client, api: httpx.Client
) -> None:
    feed = read_feed(api)
    assert {loc["id"] for loc in feed["Location"]} >= {"clinic-1", "clinic-2", "race"}
    for kind, resources in feed.items():
        assert resources, kind
        for resource in resources:
            MODELS[kind].model_validate(resource)  # raises on anything not FHIR R4
    for slot in feed["Slot"]:
        assert OFFSET.search(slot["start"]) and OFFSET.search(slot["end"]), slot
        assert slot["status"] == "free"
        link = next(
            e["valueUrl"] for e in slot["extension"] if e["url"].endswith("booking-deep-link")
        )
        assert link.startswith("https://book.example.org/?provider=")
    # Free places per day equal the shard's authoritative grid, summed over that day.
    grid = ops.get("/v1/providers/clinic-1/slots", params={"service": "vaccine"}).json()
    by_day: dict[str, int] = {}
    for s in grid["slots"]:
        if s["remaining"]:
            by_day[s["start"][:10]] = by_day.get(s["start"][:10], 0) + s["remaining"]
    published = {
        start[:10]: cap for (loc, _, start), cap in day_slots(feed).items() if loc == "clinic-1"
    }
    assert published == by_day and sum(by_day.values()) > 0


def test_feed_is_cached_and_rendered_only_where_it_changed(
    base: str, api: httpx.Client, stack: Any
) -> None:
    first = api.get("/smart/slots.ndjson")
    etag = first.headers["etag"]
    assert "max-age" in first.headers["cache-control"]
    assert api.get("/smart/slots.ndjson", headers={"If-None-Match": etag}).status_code == 304
    pub = stack[2].state.runtime.smart
    grid = api.get("/v1/providers/clinic-2/slots", params={"service": "vaccine"}).json()
    start = next(s["start"] for s in grid["slots"] if s["remaining"])
    hold = api.post(
        "/v1/holds", json={"provider_id": "clinic-2", "service": "vaccine", "start": start}
    )
    assert hold.status_code == 201
    deadline = time.monotonic() + 10
    while True:
        # Another calendar's change (a hold expiring) may be rendered first: wait for ours.
        after = api.get("/smart/slots.ndjson", headers={"If-None-Match": etag})
        rendered = ("clinic-2", "vaccine") in pub.last_rendered
        if (after.status_code == 200 and rendered) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after.status_code == 200 and after.headers["etag"] != etag
    # The changed calendar was rendered again, not the whole feed.
    assert ("clinic-2", "vaccine") in pub.last_rendered
    assert len(pub.last_rendered) < len(pub._lines)
    assert api.get("/smart/nope.ndjson").status_code == 404


@pytest.fixture(scope="module")
def second(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A second, empty hexbook (its own Redis and shards) over HTTP: (url, operator key)."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis-b")) as server:
        hb = Hexbook.connect(server.url, shards=2, namespace=f"gw-b-{uuid.uuid4().hex[:6]}")
        index = stack[2].state.runtime.index
        settings = Settings(
            redis_url=server.url,
            index_first_day=datetime.fromtimestamp(index.start, UTC).date(),
            index_days=index.days,
            smart_refresh_seconds=0,
        )
        app = create_app(settings, hexbook=hb)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        key = KeyStore(hb.redis).create("operator", "round trip")[0]
        yield f"http://127.0.0.1:{port}", key
        srv.should_exit = True
        thread.join(timeout=30)
        hb.close()


def test_round_trip_into_an_empty_hexbook(
    base: str, api: httpx.Client, second: tuple[str, str]
) -> None:
    url_b, key_b = second
    mine = read_feed(api)
    with httpx.Client(
        base_url=url_b, headers={"Authorization": f"Bearer {key_b}"}, timeout=60
    ) as b:
        r = b.post(
            "/v1/imports",
            json={
                "connector": "smart",
                "url": f"{base}/smart/$bulk-publish",
                "timezone": "America/Chicago",
            },
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["created"] == len(mine["Location"]) and not out["unplaced"] and not out["errors"]
        prefix = provider_id_for(f"smart:{base}/smart/$bulk-publish", "x")[:-1]
        deadline = time.monotonic() + 15
        while True:
            # Until b's index has seen every imported calendar, its files can come from
            # different renderings (a Slot whose Schedule was not in schedules.ndjson yet),
            # and a site without a free place (the race's) has no Slot to wait for.
            theirs = read_feed(b)
            try:
                settled = located(theirs, prefix) == located(mine) and day_slots(
                    theirs, prefix
                ) == day_slots(mine)
            except KeyError:
                settled = False
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    # The same providers, at the same places, with the same free places per day.
    assert located(theirs, prefix) == located(mine)
    assert day_slots(theirs, prefix) == day_slots(mine)
