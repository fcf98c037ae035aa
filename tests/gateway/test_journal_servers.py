"""Shards journaling to two Redis servers behind one gateway (issue 19, ADR 0025): real
Ray, two real supervised redis-servers, real HTTP.

What must hold: each shard's journal, archive and stream on its own server; the index
and the feed follow both streams; a journal server killed under load takes down only
its own shards (201/409/503, never a 500), which come back by themselves, with nothing
acknowledged lost."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import ray
import redis

from actors import archive, journal
from actors.api import Hexbook
from actors.audit import audit
from actors.embedded_redis import EmbeddedRedis
from engine.records import Booking
from gateway.app import create_app
from gateway.keys import KeyStore
from gateway.settings import Settings
from tests.dates import dst_saturday
from tests.gateway.conftest import serving
from tests.gateway.test_api import SCHEDULE, assert_problem
from tests.gateway.test_gateway_faults import hold_and_book
from tests.gateway.test_ops import events
from tests.polling import until
from tests.raycluster import start_local_ray

pytestmark = pytest.mark.integration


class Split:
    def __init__(
        self, url: str, hb: Hexbook, control: EmbeddedRedis, other: EmbeddedRedis, key: str, op: str
    ) -> None:
        self.url, self.hb, self.control, self.other = url, hb, control, other
        self.app: Any = None
        self.headers = {"Authorization": f"Bearer {key}"}
        self.operator = {"Authorization": f"Bearer {op}"}
        self.on: dict[str, str] = {}  # shard -> a provider it hosts

    def starts(self, pid: str) -> list[str]:
        r = httpx.get(f"{self.url}/v1/providers/{pid}/slots", params={"service": "vaccine"})
        assert r.status_code == 200, r.text
        return [s["start"] for s in r.json()["slots"]]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    start_local_ray("hexbook-split")
    control = EmbeddedRedis(tmp_path_factory.mktemp("control")).start()
    other = EmbeddedRedis(tmp_path_factory.mktemp("journal")).start()
    control.supervise()
    other.supervise()
    hb = Hexbook.connect(
        control.url, shards=2, journals=[other.url], namespace=f"split-{uuid.uuid4().hex[:6]}"
    )
    settings = Settings(
        redis_url=control.url,
        index_first_day=dst_saturday() - timedelta(days=1),
        index_days=4,
        shard_deadline_seconds=2.0,
    )
    operator = KeyStore(hb.redis).create("operator", "split")[0]
    client = KeyStore(hb.redis).create("booking-client", "split")[0]
    app = create_app(settings, hexbook=hb, redis_server=control)
    with serving(app) as url:
        stack = Split(url, hb, control, other, client, operator)
        stack.app = app
        window = [{"opens": "09:00", "closes": "12:00", "capacity": 200}]
        days = dict.fromkeys(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), window)
        for i in range(12):  # sites until each shard hosts one
            pid = f"site-{i}"
            body = {**SCHEDULE, "lat": 41.6 + i * 0.05, "schedule": {"days": days}}
            r = httpx.put(f"{url}/v1/providers/{pid}", json=body, headers=stack.operator)
            assert r.status_code == 201, r.text
            stack.on.setdefault(hb.shard_of(pid), pid)
            if len(stack.on) == 2:
                break
        assert set(stack.on) == {"shard-0", "shard-1"}, stack.on
        yield stack
    hb.close()
    control.stop()
    other.stop()
    ray.shutdown()


def _book(stack: Split, http: httpx.Client, pid: str, start: str, ref: str) -> httpx.Response:
    hold = http.post("/v1/holds", json={"provider_id": pid, "service": "vaccine", "start": start})
    assert hold.status_code == 201, hold.text
    return http.post(
        "/v1/bookings", json={"hold_id": hold.json()["hold_id"], "patient": {"reference": ref}}
    )


def test_each_shard_journals_to_its_server_and_the_index_follows_both(split: Split) -> None:
    assert split.hb.directory.journals() == {"shard-1": split.other.url}
    c, j = redis.Redis.from_url(split.control.url), redis.Redis.from_url(split.other.url)
    assert c.exists(journal.journal_key("shard-0")) and not j.exists(journal.journal_key("shard-0"))
    assert j.exists(journal.journal_key("shard-1")) and not c.exists(journal.journal_key("shard-1"))
    index = split.app.state.runtime.index
    with httpx.Client(base_url=split.url, headers=split.headers, timeout=30) as http:
        for pid in split.on.values():
            start = split.starts(pid)[0]
            assert _book(split, http, pid, start, f"r-{pid}").status_code == 201
            at = int(datetime.fromisoformat(start).timestamp())

            def indexed(pid: str = pid, at: int = at) -> bool:
                found = index.free_of(pid, "vaccine")
                if found is None:
                    return False
                first, seconds, free = found
                return int(free[(at - first) // seconds]) == 199

            until(indexed, seconds=30)  # the booking reached the index by its server's stream
    report = audit(c)
    assert report.ok, report.violations
    assert report.shards == 2 and report.bookings >= 2


def test_the_feed_follows_both_servers_and_resumes_from_a_joined_id(split: Split) -> None:
    timeout = httpx.Timeout(30, read=20)
    pids = list(split.on.values())
    with httpx.Client(base_url=split.url, timeout=timeout, headers=split.headers) as http:

        def hold(pid: str, n: int) -> None:
            start = split.starts(pid)[n]
            body = {"provider_id": pid, "service": "vaccine", "start": start}
            assert http.post("/v1/holds", json=body).status_code == 201

        with http.stream("GET", "/v1/feed") as r:
            assert r.status_code == 200
            threading.Timer(0.3, lambda: [hold(p, 3) for p in pids]).start()
            got: list[dict[str, Any]] = []
            for e in events(r.iter_lines()):
                if e.get("event") == "availability":
                    got.append(e)
                    seen = {c["provider_id"] for g in got for c in json.loads(g["data"])["changes"]}
                    if seen >= set(pids):
                        break
        assert all(len(e["id"].split(".")) == 2 for e in got), [e["id"] for e in got]
        # Resuming after the first event replays what came after it (on either server).
        hold(pids[1], 4)
        with http.stream("GET", "/v1/feed", headers={"Last-Event-ID": got[0]["id"]}) as r:
            replayed = next(e for e in events(r.iter_lines()) if e.get("event") == "availability")
        assert replayed["id"] != got[0]["id"]
        # A single stream's id is not a cursor of this feed: it is told so.
        one = got[0]["id"].split(".")[0]
        assert_problem(http.get("/v1/feed", params={"after": one}), 422, "validation_error")


def test_a_journal_server_killed_under_load_stops_only_its_shards_and_they_come_back(
    split: Split,
) -> None:
    home, away = split.on["shard-0"], split.on["shard-1"]  # on the control / other server
    starts = {pid: split.starts(pid) for pid in (home, away)}
    acked: list[tuple[str, str]] = []
    statuses: dict[str, Counter[int]] = {home: Counter(), away: Counter()}
    down_201: Counter[str] = Counter()  # bookings acknowledged while away's shard is down
    down = threading.Event()
    stop = asyncio.Event()

    async def patient(i: int, pid: str, http: httpx.AsyncClient) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body = {"provider_id": pid, "service": "vaccine", "start": starts[pid][(i + n) % 12]}
            try:
                answers, booked = await hold_and_book(http, body, f"p{i}")
            except httpx.TransportError:
                continue
            if booked is not None:
                acked.append(booked)
                if down.is_set():
                    down_201[pid] += 1
            for r in answers:
                statuses[pid][r.status_code] += 1
            if any(r.status_code == 503 for r in answers):
                await asyncio.sleep(0.1)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=split.url, headers=split.headers, timeout=30) as h:
            tasks = [
                asyncio.create_task(patient(i, pid, h)) for i in range(4) for pid in (home, away)
            ]
            while min(statuses[home][201], statuses[away][201]) < 10:  # both booking
                await asyncio.sleep(0.05)
            restarts = split.other.restarts
            split.other.kill()  # SIGKILL the journal server; its supervisor starts it again
            down.set()  # until the away site books again: its server away, then recovering
            while split.other.restarts == restarts:
                await asyncio.sleep(0.05)
            served = statuses[away][201]
            while statuses[away][201] == served:
                await asyncio.sleep(0.05)
            down.clear()
            before = len(acked)
            while statuses[away][201] < served + 10 or len(acked) < before + 10:
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(asyncio.wait_for(run(), 180))
    for pid in (home, away):
        assert set(statuses[pid]) <= {201, 409, 503}, statuses
    assert statuses[away][503] >= 1, statuses  # its server was away
    assert down_201[home] >= 1, (down_201, statuses)  # the other server's shard served on
    with httpx.Client(base_url=split.url, headers=split.headers, timeout=30) as http:
        for booking_id, token in acked:
            r = http.get(f"/v1/bookings/{booking_id}", headers={"X-Booking-Token": token})
            assert r.status_code == 200 and r.json()["status"] == "active", r.text
    report = audit(redis.Redis.from_url(split.control.url))
    assert report.ok, report.violations
    assert ray.get(split.hb.shard("shard-1").info.remote(), timeout=30)["calendars"] >= 1


def test_a_site_promoted_to_a_shard_on_the_other_server_takes_its_archive_along(
    split: Split,
) -> None:
    """A moved site's archived days (bookings whose day left the window) are read by its
    new shard from the new shard's server: the move copies them there before the
    take-over and deletes the old copy after the switch (no patient data left where
    nothing erases it)."""
    pid = split.on["shard-1"]  # journals to the other server
    old = redis.Redis.from_url(split.other.url)
    past = Booking("bk-past", 1_700_000_000, 1, "ref-past", b"\x00" * 32, "h-past", 1_699_999_000)
    old.hset(archive.archive_key(pid, "vaccine"), past.booking_id,
             archive.seal_booking(None, pid, "vaccine", past))  # fmt: skip
    r = httpx.post(f"{split.url}/v1/providers/{pid}/dedicated-shard", headers=split.operator,
                   timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    shard = split.hb.directory.shard_of(pid)
    assert shard == f"dedicated-{pid}"
    assert split.hb.directory.journal_of(shard) is None  # the deployment's: fewer shards
    new = redis.Redis.from_url(split.control.url)
    assert not old.exists(archive.archive_key(pid, "vaccine"))
    found = ray.get(split.hb.shard(shard).booking.remote(pid, "vaccine", "bk-past"), timeout=30)
    assert isinstance(found, Booking) and found.patient_ref == "ref-past", found
    assert new.hexists(archive.archive_key(pid, "vaccine"), "bk-past")
    report = audit(new)
    assert report.ok, report.violations
    assert report.archived == 1
