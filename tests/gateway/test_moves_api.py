"""Moving sites between shards through the API (operators), under racing booking
clients: a cell moved and a hot site promoted online, answers 201/409/503 only (a 503
repeated with its Idempotency-Key), nothing acknowledged lost; a move a crash cut short
is listed and finished by ``POST /v1/moves/resume``; bad input is a problem."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors import moves
from actors.api import Hexbook
from actors.audit import audit
from gateway.app import create_app
from tests.actors.test_moves import Crash, crash_at
from tests.gateway.conftest import serving
from tests.gateway.test_api import SCHEDULE, assert_problem, slots
from tests.polling import until

SITES = {"move-a": 41.91, "move-b": 41.72, "move-c": 41.99}


@pytest.fixture(scope="module")
def sites(base: str, ops: httpx.Client) -> dict[str, list[str]]:
    day = [{"opens": "08:00", "closes": "20:00", "capacity": 3}]
    schedule = {"days": dict.fromkeys(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), day)}
    for pid, lat in SITES.items():
        r = ops.put(f"/v1/providers/{pid}", json={**SCHEDULE, "lat": lat, "schedule": schedule})
        assert r.status_code == 201, r.text
    return {pid: [s["start"] for s in slots(ops, pid)] for pid in SITES}


class Bookers:
    """Threads holding and booking at the sites; a 503 is repeated with its key."""

    def __init__(self, url: str, key: str, starts: dict[str, list[str]], n: int = 6) -> None:
        self.url, self.key, self.starts = url, key, starts
        self.statuses: Counter[int] = Counter()
        self.booked: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(n)]

    def post(self, http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        for _ in range(200):
            r = http.post(path, json=body, headers=key)
            with self.lock:
                self.statuses[r.status_code] += 1
            if r.status_code != 503:
                return r
            assert r.headers.get("retry-after"), r.text
            self.stop.wait(0.05)  # a client backs off (Retry-After is whole seconds)
        raise AssertionError(f"{path} answered 503 200 times")

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        auth = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=60) as http:
            while not self.stop.is_set():
                pid = rng.choice(sorted(self.starts))
                start = rng.choice(self.starts[pid])
                body = {"provider_id": pid, "service": "vaccine", "start": start}
                hold = self.post(http, "/v1/holds", body)
                if hold.status_code != 201:
                    continue
                patient = {"reference": f"p-{seed}"}
                b = self.post(
                    http, "/v1/bookings", {"hold_id": hold.json()["hold_id"], "patient": patient}
                )
                if b.status_code == 201:
                    with self.lock:
                        self.booked.append(b.json()["booking_id"])

    def __enter__(self) -> Bookers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def more_bookings(bookers: Bookers, n: int) -> None:
    before = len(bookers.booked)
    until(lambda: len(bookers.booked) >= before + n, seconds=90)


def test_shards_move_and_promote_online_under_racing_clients(
    stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
    keys: dict[str, str],
    sites: dict[str, list[str]],
) -> None:
    url, hb, _ = stack
    shards = ops.get("/v1/shards")
    assert shards.status_code == 200, shards.text
    assert [s["name"] for s in shards.json()["shards"]] == hb.directory.shards
    assert shards.json()["moves"] == []
    cell = hb._call(hb.directory.shard_of("move-a"), "provider", "move-a").cell(
        hb.directory.resolution
    )
    source = hb.directory.shard_of("move-a")
    target = next(s for s in hb.directory.shards if s != source)
    with Bookers(url, keys["booking-client"], sites) as bookers:
        more_bookings(bookers, 10)
        r = ops.put(f"/v1/cells/{cell}/shard", json={"shard": target})
        assert r.status_code == 200, r.text
        assert "move-a" in r.json()["moved"]
        more_bookings(bookers, 10)
        r = ops.post("/v1/providers/move-b/dedicated-shard")
        assert r.status_code == 200, r.text
        assert r.json() == {"provider_id": "move-b", "shard": "dedicated-move-b"}
        more_bookings(bookers, 10)
    assert set(bookers.statuses) <= {201, 409, 503}, bookers.statuses
    assert hb.directory.shard_of("move-a") == target
    listed = {s["name"]: s for s in ops.get("/v1/shards").json()["shards"]}
    assert listed["dedicated-move-b"]["dedicated_to"] == "move-b"
    assert listed["dedicated-move-b"]["providers"] == 1
    # Every booking acknowledged is there, where the directory says, and none overbooked.
    acks = [{"op": "booked", "booking_id": b} for b in bookers.booked]
    report = audit(hb.redis, acks, hb.keyring)
    assert report.ok, report.violations[:5]
    assert report.acknowledged == len(acks) > 30
    # The search index follows: free places of a moved site still count down.
    r = ops.get("/v1/providers/move-a/slots", params={"service": "vaccine"})
    assert r.status_code == 200, r.text


def cut_short(hb: Hexbook, provider_id: str, step: moves.Step) -> tuple[str, str]:
    """Move ``provider_id`` to another shard, the mover dying at ``step``: (from, to)."""
    source = hb.directory.shard_of(provider_id)
    target = next(s for s in hb.directory.shards if s != source)
    with pytest.raises(Crash):
        moves.move_provider(hb, provider_id, target, on_step=crash_at(step))
    return source, target


def test_a_move_cut_short_is_listed_and_finished_by_resume(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, sites: dict[str, list[str]]
) -> None:
    _, hb, _ = stack
    # A place the racing clients of the test before left free (they book at full speed).
    start = next(s["start"] for s in slots(ops, "move-c") if s["remaining"] > 0)
    source, target = cut_short(hb, "move-c", "handed")
    assert ops.get("/v1/shards").json()["moves"] == [
        {"kind": "provider", "id": "move-c", "from_shard": source, "to_shard": target}
    ]
    # Meanwhile its bookings are a 503 to retry, never a 404 or a 500.
    r = ops.post("/v1/holds", json={"provider_id": "move-c", "service": "vaccine", "start": start})
    assert_problem(r, 503, "unavailable")
    assert r.headers["retry-after"]
    r = ops.post("/v1/moves/resume")
    assert r.status_code == 200, r.text
    assert r.json() == {"finished": ["provider:move-c"]}
    assert ops.get("/v1/shards").json()["moves"] == []
    r = ops.post("/v1/holds", json={"provider_id": "move-c", "service": "vaccine", "start": start})
    assert r.status_code == 201, r.text


def test_a_gateway_that_starts_finishes_a_move_cut_short(
    stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client, sites: dict[str, list[str]]
) -> None:
    _, hb, app = stack
    _, target = cut_short(hb, "move-c", "taken")
    assert moves.pending(hb) != {}
    with serving(create_app(app.state.runtime.settings, hexbook=hb)):  # no one asks it
        until(lambda: moves.pending(hb) == {}, seconds=60)
    assert hb.directory.shard_of("move-c") == target


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("put", "/v1/cells/not-a-cell/shard", {"shard": "shard-0"}, 422, "validation_error"),
        ("put", "/v1/cells/8f2830828052d25/shard", {"shard": "shard-0"}, 422, "validation_error"),
        ("put", "/v1/cells/882664c1a9fffff/shard", {"shard": "nowhere"}, 422, "validation_error"),
        ("put", "/v1/cells/882664c1a9fffff/shard", {"shard": 3}, 422, "validation_error"),
        ("put", "/v1/cells/882664c1a9fffff/shard", {}, 422, "validation_error"),
        ("post", "/v1/providers/no-such-site/dedicated-shard", None, 404, "provider_not_found"),
    ],
)
def test_bad_moves_are_problems(
    ops: httpx.Client,
    sites: dict[str, list[str]],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    r = ops.request(method, path, json=body)
    assert_problem(r, status, code)


def test_moves_are_for_operators(
    stack: tuple[str, Hexbook, FastAPI], api: httpx.Client, sites: dict[str, list[str]]
) -> None:
    for r in (
        api.get("/v1/shards"),
        api.put("/v1/cells/882664c1a9fffff/shard", json={"shard": "shard-0"}),
        api.post("/v1/providers/move-a/dedicated-shard"),
        api.post("/v1/moves/resume"),
    ):
        assert_problem(r, 403, "forbidden")
