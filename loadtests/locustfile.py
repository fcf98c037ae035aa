"""The launch, as Locust users. Run it with ``hexbook-load`` (or ``locust -f`` this file).

Residents live where the city's population lives (H3 cells, :mod:`simulators.city`), so
load lands on cells and shards as it would. Behaviours, weighted as data
(``HEXBOOK_LOAD_WEIGHTS``, JSON; defaults in ``DEFAULT_WEIGHTS``):

- ``searcher``: looks for open slots near home, again and again;
- ``booker``: searches, holds the first slot offered, books it; on a 409 (someone was
  faster) tries the next slot, as a person would, up to five times;
- ``changer``: books, then cancels or reschedules to a later slot;
- ``feed``: an operator's screen on the live feed, reconnecting with Last-Event-ID.

With ``HEXBOOK_LOAD_ROOM`` (``hexbook-load --room``) bookers and changers go through
that waiting room first: they join it, ask where they stand when the answer says to,
and hold with the admission they get; those told their area is sold out stop there
(an expected outcome, on its own row).

Failures are named by their reason (``401 unauthorized``, ``503 overloaded``: the
status and the problem's code), so a run's failures add up by cause. With
``HEXBOOK_LOAD_LIVE`` (a file) the figures so far are written there every second
(:func:`live_snapshot`), for ``hexbook-load``'s live console.

Every booking a user is told about (and every cancel or move) is written as a JSON line
to ``HEXBOOK_LOAD_ACKS`` (a folder; one file per process), which the audit checks
against the journals. 409 answers are expected: they count as successes of their
request and appear on their own rows (``409 hold taken`` ...), out of the error ratio.
No Ray here: a load generator runs anywhere.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from locust import FastHttpUser, HttpUser, between, events, task

from loadtests.reasons import clean, reason
from loadtests.shapes import SHAPES
from simulators.city import homes, read_cells_csv, synthetic_city

DEFAULT_WEIGHTS = {"searcher": 5, "booker": 4, "changer": 1, "feed": 0}
WEIGHTS = {**DEFAULT_WEIGHTS, **json.loads(os.environ.get("HEXBOOK_LOAD_WEIGHTS", "{}"))}
KEY = os.environ.get("HEXBOOK_LOAD_KEY", "")
SERVICE = os.environ.get("HEXBOOK_LOAD_SERVICE", "covid-vaccine")
RADIUS_KM = float(os.environ.get("HEXBOOK_LOAD_RADIUS_KM", "8"))
ROOM = os.environ.get("HEXBOOK_LOAD_ROOM", "")
_cells_csv = os.environ.get("HEXBOOK_LOAD_CITY")
CITY = read_cells_csv(_cells_csv) if _cells_csv else synthetic_city()
_rng = random.Random(int(os.environ.get("HEXBOOK_LOAD_SEED", "2021")) + os.getpid())
HOMES = homes(CITY, 5000, _rng)

Shape = type("Shape", (SHAPES[os.environ.get("HEXBOOK_LOAD_SHAPE", "spike")],), {"abstract": False})


class _Acks:
    """Acknowledged bookings, one JSON line each, flushed as they happen."""

    def __init__(self) -> None:
        folder = os.environ.get("HEXBOOK_LOAD_ACKS")
        self.file = None
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.file = open(Path(folder) / f"acks-{os.getpid()}.jsonl", "a")  # noqa: SIM115

    def write(self, **record: Any) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"t": time.time(), **record}) + "\n")
            self.file.flush()


ACKS = _Acks()


def live_snapshot(environment: Any) -> dict[str, Any]:
    """The run so far: users, and per endpoint requests, failures, the current rate and
    percentiles (ms), and failures by endpoint and reason."""
    stats = environment.runner.stats
    rows = []
    for entry in sorted(stats.entries.values(), key=lambda e: (e.method == "EXPECTED", e.name)):
        n = entry.num_requests
        rows.append({
            "type": entry.method, "name": entry.name, "requests": n,
            "failures": entry.num_failures, "rps": round(entry.current_rps, 2),
            **{f"p{q}": entry.get_response_time_percentile(q / 100) if n else 0
               for q in (50, 95, 99)},
        })  # fmt: skip
    failures = [
        {"name": e.name, "reason": clean(e.error), "count": e.occurrences}
        for e in stats.errors.values()
    ]
    failures.sort(key=lambda f: -f["count"])
    total = stats.total
    return {
        "t": time.time(),
        "users": environment.runner.user_count,
        "total": {"requests": total.num_requests, "failures": total.num_failures,
                  "rps": round(total.current_rps, 2),
                  **{f"p{q}": total.get_response_time_percentile(q / 100)
                     if total.num_requests else 0 for q in (50, 95, 99)}},
        "rows": rows,
        "failures": failures,
    }  # fmt: skip


def _live_figures(environment: Any, **_: Any) -> None:
    """Every second, the figures so far into ``HEXBOOK_LOAD_LIVE`` (replaced whole)."""
    path = os.environ.get("HEXBOOK_LOAD_LIVE")
    if not path or environment.runner is None:
        return
    import gevent  # type: ignore[import-untyped]

    def loop() -> None:
        target = Path(path)
        part = target.with_suffix(".part")
        while True:
            part.write_text(json.dumps(live_snapshot(environment)))
            part.replace(target)
            gevent.sleep(1)

    gevent.spawn(loop)


events.test_start.add_listener(_live_figures)  # type: ignore[no-untyped-call]


def _expected(name: str, started: float) -> None:
    """Count an expected outcome (a 409, a give-up) on a row of its own."""
    events.request.fire(  # type: ignore[no-untyped-call]
        request_type="EXPECTED",
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=0,
        exception=None,
        context={},
    )


class Resident(FastHttpUser):
    abstract = True
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.home = random.choice(HOMES)
        self.auth = {"Authorization": f"Bearer {KEY}"} if KEY else {}

    def search(self) -> list[tuple[str, str]]:
        """(provider, start) of the open slots near home, best first."""
        lat, lng = self.home
        with self.client.get(
            f"/v1/search?lat={lat:.5f}&lng={lng:.5f}&service={SERVICE}&radius_km={RADIUS_KM}"
            "&limit=10",
            name="GET /v1/search",
            headers=self.auth,
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(reason(r))
                return []
            results = r.json()["results"]
        return [(p["provider_id"], s["start"]) for p in results for s in p["next_slots"][:2]]

    def admitted(self) -> str | None:
        """Through the waiting room: join, wait, and the admission (None: sold out, the
        room closed, or still waiting after 10 minutes)."""
        started = time.perf_counter()
        lat, lng = self.home
        body = {"visitor_id": uuid.uuid4().hex, "lat": lat, "lng": lng}
        with self.client.post(
            f"/v1/rooms/{ROOM}/visitors", json=body, name="POST /v1/rooms/{id}/visitors",
            headers=self.auth, catch_response=True,
        ) as r:  # fmt: skip
            if r.status_code not in (200, 201):
                r.failure(reason(r))
                return None
            view = r.json()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if view["status"] == "admitted":
                _expected("admitted by the room", started)
                return str(view["admission"])
            if view["status"] not in ("pre-queue", "waiting"):
                _expected(f"room: {view['status']}", started)
                return None
            time.sleep(view["poll_after_seconds"] or 2)  # gevent: yields to other users
            with self.client.get(
                f"/v1/rooms/{ROOM}/visitors/{body['visitor_id']}",
                name="GET /v1/rooms/{id}/visitors/{visitor}", headers=self.auth,
                catch_response=True,
            ) as r:  # fmt: skip
                if r.status_code != 200:
                    r.failure(reason(r))
                    return None
                view = r.json()
        _expected("room: still waiting after 10 minutes", started)
        return None

    def book(self, tries: int = 5) -> dict[str, Any] | None:
        """Search, hold, book; on 409 the next slot. The booking, or None (gave up)."""
        started = time.perf_counter()
        admission = self.admitted() if ROOM else None
        if ROOM and admission is None:
            return None
        for provider_id, start in self.search()[:tries]:
            body = {"provider_id": provider_id, "service": SERVICE, "start": start}
            if admission is not None:
                body["admission"] = admission
            with self.client.post(
                "/v1/holds", json=body, name="POST /v1/holds", headers=self.auth,
                catch_response=True,
            ) as r:  # fmt: skip
                if r.status_code == 409:
                    r.success()
                    _expected("409 hold taken", started)
                    continue
                if r.status_code != 201:
                    r.failure(reason(r))
                    return None
                hold = r.json()
            key = uuid.uuid4().hex
            booking_body = {"hold_id": hold["hold_id"], "patient": {"reference": key[:12]}}
            with self.client.post(
                "/v1/bookings", json=booking_body, name="POST /v1/bookings",
                headers={**self.auth, "Idempotency-Key": key}, catch_response=True,
            ) as r:  # fmt: skip
                if r.status_code == 410:
                    r.success()
                    _expected("410 hold expired", started)
                    continue
                if r.status_code != 201:
                    r.failure(reason(r))
                    return None
                booking: dict[str, Any] = r.json()
            ACKS.write(op="booked", booking_id=booking["booking_id"], key=key)
            return booking
        _expected("gave up (no slot after 5 tries)", started)
        return None


class Searcher(Resident):
    weight = WEIGHTS["searcher"]

    @task
    def look(self) -> None:
        self.search()


class Booker(Resident):
    weight = WEIGHTS["booker"]

    @task
    def book_once(self) -> None:
        self.book()
        self.home = random.choice(HOMES)  # the next resident


class Changer(Resident):
    weight = WEIGHTS["changer"]

    @task
    def book_then_change(self) -> None:
        booking = self.book()
        if booking is None:
            return
        bid = booking["booking_id"]
        headers = {**self.auth, "X-Booking-Token": booking["booking_token"]}
        if random.random() < 0.5:
            with self.client.delete(
                f"/v1/bookings/{bid}", name="DELETE /v1/bookings/{id}", headers=headers,
                catch_response=True,
            ) as r:  # fmt: skip
                if r.status_code == 204:
                    ACKS.write(op="cancelled", booking_id=bid)
                else:
                    r.failure(reason(r))
            return
        current = (booking["provider_id"], datetime.fromisoformat(booking["start"]))
        others = [
            (p, start)
            for p, start in self.search()
            if (p, datetime.fromisoformat(start)) != current  # a move, not a no-op
        ]
        for provider_id, start in others[:3]:
            body = {"provider_id": provider_id, "service": SERVICE, "start": start}
            asked = time.perf_counter()
            with self.client.post(
                f"/v1/bookings/{bid}/reschedule", json=body,
                name="POST /v1/bookings/{id}/reschedule", headers=headers, catch_response=True,
            ) as r:  # fmt: skip
                if r.status_code == 409:
                    r.success()
                    _expected("409 reschedule slot taken", asked)
                    continue
                if r.status_code == 200:
                    ACKS.write(
                        op="rescheduled", booking_id=bid, new_booking_id=r.json()["booking_id"]
                    )
                else:
                    r.failure(reason(r))
                return


class FeedReader(HttpUser):
    """An operator's screen: follows the feed for 10 s, then reconnects from its last id."""

    weight = WEIGHTS["feed"]
    wait_time = between(0.5, 1)
    last_id: str | None = None

    @task
    def follow(self) -> None:
        headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        deadline = time.monotonic() + 10
        with self.client.get(
            "/v1/feed", name="GET /v1/feed (10 s)", headers=headers, stream=True,
            catch_response=True, timeout=30,
        ) as r:  # fmt: skip
            if r.status_code != 200:
                r.failure(reason(r))
                return
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("id: "):
                    self.last_id = line[4:]
                if time.monotonic() > deadline:
                    break
            r.success()


for _cls in (Searcher, Booker, Changer, FeedReader):
    if _cls.weight <= 0:
        _cls.abstract = True  # weight 0: not part of this run
del _cls  # Locust collects user classes from module names: one name per class
