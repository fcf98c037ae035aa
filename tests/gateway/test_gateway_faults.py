"""The gateway under faults (issue 13): Redis killed under load, a stalled shard, a shard
killed after it committed a booking. Real Ray, a real (supervised) redis-server, real HTTP.

What must hold: only 201, 409 or 503-with-Retry-After while Redis is away, never a 500
and never a traceback per request; service back without a person; a stalled shard
answered with 503 within the deadline; a retried booking is its first answer, token
included; nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import ray
from fastapi import FastAPI

from actors.api import Hexbook
from actors.availability import AVAILABILITY_STREAM, encode_entry
from actors.embedded_redis import EmbeddedRedis
from gateway.app import create_app
from gateway.keys import KeyStore
from gateway.settings import Settings
from tests.dates import dst_saturday
from tests.gateway.conftest import serving
from tests.gateway.test_api import SCHEDULE, assert_problem
from tests.raycluster import start_local_ray

pytestmark = pytest.mark.integration
DEADLINE = 2.0  # seconds a shard may take before its callers hear 503


class Stack:
    def __init__(
        self, url: str, hb: Hexbook, server: EmbeddedRedis, key: str, app: FastAPI, op: str
    ) -> None:
        self.url, self.hb, self.server, self.app = url, hb, server, app
        self.operator = {"Authorization": f"Bearer {op}"}
        self.headers = {"Authorization": f"Bearer {key}"}

    def slots(self, pid: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/v1/providers/{pid}/slots", params={"service": "vaccine"})
        assert r.status_code == 200, r.text
        return list(r.json()["slots"])


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    start_local_ray("hexbook-gwf")
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    server.supervise()
    hb = Hexbook.connect(server.url, shards=2, namespace=f"gwf-{uuid.uuid4().hex[:6]}")
    settings = Settings(
        redis_url=server.url,
        index_first_day=dst_saturday() - timedelta(days=1),
        index_days=4,
        shard_deadline_seconds=DEADLINE,
        key_cache_seconds=0,  # every request looks its key up in Redis
    )
    operator = KeyStore(hb.redis).create("operator", "faults")[0]
    client = KeyStore(hb.redis).create("booking-client", "faults")[0]
    app = create_app(settings, hexbook=hb, redis_server=server)
    with serving(app) as url:
        for pid, lat in (("north", 41.95), ("south", 41.70)):
            body = {**SCHEDULE, "lat": lat, "schedule": _day(capacity=200)}
            r = httpx.put(
                f"{url}/v1/providers/{pid}",
                json=body,
                headers={"Authorization": f"Bearer {operator}"},
                timeout=60,
            )
            assert r.status_code == 201, r.text
        yield Stack(url, hb, server, client, app, operator)
    hb.close()
    server.stop()
    ray.shutdown()


async def hold_and_book(
    http: httpx.AsyncClient, body: dict[str, Any], ref: str
) -> tuple[list[httpx.Response], tuple[str, str] | None]:
    """Hold ``body``'s place and book it: the answers, and (booking id, token) when it
    was booked."""
    hold = await http.post("/v1/holds", json=body)
    if hold.status_code != 201:
        return [hold], None
    booking = await http.post(
        "/v1/bookings", json={"hold_id": hold.json()["hold_id"], "patient": {"reference": ref}}
    )
    if booking.status_code != 201:
        return [hold, booking], None
    b = booking.json()
    return [hold, booking], (b["booking_id"], b["booking_token"])


def _day(capacity: int) -> dict[str, Any]:
    window = [{"opens": "09:00", "closes": "12:00", "capacity": capacity}]
    return {"days": dict.fromkeys(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), window)}


def _shard_pid(stack: Stack, pid: str) -> int:
    shard = stack.hb.shard_of(pid)
    return int(ray.get(stack.hb.shard(shard).info.remote(), timeout=30)["pid"])


def _until(check: Any, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        out = check()
        if out:
            return out
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.1)


def test_redis_killed_under_load_gives_201_409_or_503_and_comes_back_by_itself(
    faulty: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    starts = [s["start"] for s in faulty.slots("north")]
    acked: list[tuple[str, str]] = []
    statuses: Counter[int] = Counter()
    missing_retry_after = 0
    stop = asyncio.Event()

    async def patient(i: int, http: httpx.AsyncClient) -> None:
        nonlocal missing_retry_after
        n = 0
        while not stop.is_set():
            n += 1
            body = {"provider_id": "north", "service": "vaccine", "start": starts[(i + n) % 12]}
            try:
                answers, booked = await hold_and_book(http, body, f"p{i}")
            except httpx.TransportError:
                continue
            if booked is not None:
                acked.append(booked)
            for r in answers:
                statuses[r.status_code] += 1
                if r.status_code == 503 and "retry-after" not in r.headers:
                    missing_retry_after += 1
            if any(r.status_code == 503 for r in answers):
                await asyncio.sleep(0.1)

    async def run() -> None:
        async with httpx.AsyncClient(
            base_url=faulty.url, headers=faulty.headers, timeout=30
        ) as http:
            tasks = [asyncio.create_task(patient(i, http)) for i in range(12)]
            await asyncio.sleep(1.5)
            restarts = faulty.server.restarts
            faulty.server.kill()  # SIGKILL; the supervisor starts it again
            while faulty.server.restarts == restarts:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)  # shards fail stop and recover meanwhile
            before = len(acked)
            while len(acked) < before + 5:  # service resumed, nobody touched it
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)

    with caplog.at_level(logging.WARNING):
        asyncio.run(asyncio.wait_for(run(), 180))
    assert set(statuses) <= {201, 409, 503}, statuses
    assert statuses[503] >= 1 and statuses[201] >= 10, statuses
    assert missing_retry_after == 0
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("uvicorn")]
    assert not tracebacks, tracebacks[0].getMessage()
    # Nothing acknowledged was lost: every booking reads back with its token.
    for booking_id, token in acked:
        r = httpx.get(
            f"{faulty.url}/v1/bookings/{booking_id}",
            headers={**faulty.headers, "X-Booking-Token": token},
        )
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
    ready = httpx.get(f"{faulty.url}/readyz").json()
    assert ready["redis_restarts"] >= 1
    metrics = httpx.get(f"{faulty.url}/metrics").text
    assert "hexbook_embedded_redis_up 1.0" in metrics
    assert 'status="503"' in metrics  # the 503s were counted


def test_a_stalled_shard_holds_back_its_own_calendars_only_in_the_index(faulty: Stack) -> None:
    """A calendar change (a day's roll, a replaced schedule) is read whole from its shard.
    With that shard stalled, the index still applies every other shard's slot changes:
    read in the stream's order, one stalled read held the whole index back (a launch's
    load made each read seconds long, and search showed taken places for minutes)."""
    south = faulty.hb.shard_of("south")
    for i in range(40):  # a provider on the other shard (placed by a hash of its cell)
        lat = 41.80 + i * 0.004
        body = {**SCHEDULE, "lat": lat, "lng": -87.40, "schedule": _day(capacity=200)}
        r = httpx.put(f"{faulty.url}/v1/providers/elsewhere", json=body,
                      headers=faulty.operator, timeout=60)  # fmt: skip
        assert r.status_code in (200, 201), r.text
        if faulty.hb.shard_of("elsewhere", refresh=True) != south:
            break
    assert faulty.hb.shard_of("elsewhere") != south

    def first_slot() -> tuple[str, int] | None:
        r = httpx.get(f"{faulty.url}/v1/search", params={
            "lat": lat, "lng": -87.40, "service": "vaccine", "radius_km": 1})  # fmt: skip
        found = r.json()["results"]
        if not found or found[0]["provider_id"] != "elsewhere":
            return None
        slot = found[0]["next_slots"][0]
        return slot["start"], slot["remaining"]

    start, before = _until(first_slot)
    pid = _shard_pid(faulty, "south")
    client = faulty.hb.redis
    os.kill(pid, signal.SIGSTOP)
    try:
        # what the stalled shard's daily roll writes: read the calendar whole
        client.xadd(AVAILABILITY_STREAM, encode_entry(south, [], [("south", "vaccine")]))
        body = {"provider_id": "elsewhere", "service": "vaccine", "start": start}
        r = httpx.post(f"{faulty.url}/v1/holds", json=body, headers=faulty.headers, timeout=30)
        assert r.status_code == 201, r.text
        _until(lambda: first_slot() == (start, before - 1), 20)
    finally:
        os.kill(pid, signal.SIGCONT)
    # and the stalled shard's calendar is read once it answers again
    index = faulty.app.state.runtime.index
    _until(lambda: ("south", "vaccine") not in index._stale, 30)


def test_a_gateway_starts_while_a_shard_is_away_and_reads_it_when_it_answers(
    faulty: Stack,
) -> None:
    """A gateway that joins while a shard's node is lost (the shard restarting
    elsewhere) starts and serves; it reads that shard's calendars once it answers. It
    failed its startup instead, again and again while the shard was away."""
    south = faulty.hb.shard_of("south")
    for i in range(40):  # a provider on the other shard (placed by a hash of its cell)
        other = f"other-{i}"
        body = {**SCHEDULE, "lat": 41.60 - i * 0.004, "lng": -87.50, "schedule": _day(50)}
        r = httpx.put(f"{faulty.url}/v1/providers/{other}", json=body,
                      headers=faulty.operator, timeout=60)  # fmt: skip
        assert r.status_code in (200, 201), r.text
        if faulty.hb.shard_of(other, refresh=True) != south:
            break
    assert faulty.hb.shard_of(other) != south
    pid = _shard_pid(faulty, "south")
    settings = faulty.app.state.runtime.settings
    os.kill(pid, signal.SIGSTOP)
    try:
        late = create_app(settings, hexbook=faulty.hb)
        with serving(late) as url:  # started, though one shard does not answer
            index = late.state.runtime.index
            assert index.unread == {south}
            assert (other, "vaccine") in index.calendars()
            assert ("south", "vaccine") not in index.calendars()
            os.kill(pid, signal.SIGCONT)
            _until(lambda: ("south", "vaccine") in index.calendars(), 60)
            assert index.unread == set()
            r = httpx.get(f"{url}/v1/providers/south/slots", params={"service": "vaccine"})
            assert r.status_code == 200, r.text
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stalled_shard_gets_503_within_the_deadline_and_a_retry_books_once(
    faulty: Stack,
) -> None:
    start = faulty.slots("south")[5]["start"]
    pid = _shard_pid(faulty, "south")
    body = {"provider_id": "south", "service": "vaccine", "start": start}
    key = {"Idempotency-Key": "stalled-1"}
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = httpx.post(
            f"{faulty.url}/v1/holds", json=body, headers={**faulty.headers, **key}, timeout=30
        )
        waited = time.monotonic() - t0
        assert_problem(r, 503, "unavailable")
        assert r.headers["retry-after"] == "1"
        assert DEADLINE <= waited < DEADLINE + 3, waited
        # The rest of the gateway still answers.
        assert httpx.get(f"{faulty.url}/healthz", timeout=5).status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    # The stalled command may have been applied meanwhile: the retry is one hold either way.
    retried = _until(
        lambda: (
            x
            if (
                x := httpx.post(
                    f"{faulty.url}/v1/holds", json=body, headers={**faulty.headers, **key}
                )
            ).status_code
            == 201
            else None
        )
    )
    again = httpx.post(f"{faulty.url}/v1/holds", json=body, headers={**faulty.headers, **key})
    assert again.json() == retried.json()
    held = next(s for s in faulty.slots("south") if s["start"] == start)
    assert held["capacity"] - held["remaining"] == 1


def test_a_booking_retried_after_its_shard_was_killed_is_the_first_answer_with_its_token(
    faulty: Stack,
) -> None:
    start = faulty.slots("south")[7]["start"]
    hold = httpx.post(
        f"{faulty.url}/v1/holds",
        json={"provider_id": "south", "service": "vaccine", "start": start},
        headers=faulty.headers,
    ).json()
    body = {"hold_id": hold["hold_id"], "patient": {"reference": "killed"}}
    key = {**faulty.headers, "Idempotency-Key": "after-kill-1"}
    first = httpx.post(f"{faulty.url}/v1/bookings", json=body, headers=key)
    assert first.status_code == 201  # ... and suppose this answer never reached the client
    ray.kill(faulty.hb.shard(faulty.hb.shard_of("south")), no_restart=False)
    retried = _until(
        lambda: (
            x
            if (x := httpx.post(f"{faulty.url}/v1/bookings", json=body, headers=key)).status_code
            == 201
            else None
        )
    )
    assert retried.json() == first.json()
    token = retried.json()["booking_token"]
    read = httpx.get(
        f"{faulty.url}/v1/bookings/{first.json()['booking_id']}",
        headers={**faulty.headers, "X-Booking-Token": token},
    )
    assert read.status_code == 200 and read.json()["patient"]["reference"] == "killed"
