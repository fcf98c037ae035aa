"""The live feed (server-sent events, resumable), Prometheus metrics, structured logs."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from gateway.observe import JsonFormatter
from tests.gateway.test_api import assert_problem, slots
from tests.polling import until


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"access_log": True}


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events as dicts (``id``, ``event``, ``data``), skipping comments."""
    event: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def entry(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def hold(api: httpx.Client, n: int) -> dict[str, Any]:
    start = slots(api, "clinic-1")[n]["start"]
    r = api.post(
        "/v1/holds", json={"provider_id": "clinic-1", "service": "vaccine", "start": start}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_feed_streams_changes_and_resumes_after_last_event_id(base: str, api: httpx.Client) -> None:
    timeout = httpx.Timeout(30, read=20)
    with httpx.Client(base_url=base, timeout=timeout, headers=api.headers) as http:
        with http.stream("GET", "/v1/feed") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            # Change something once the stream is open.
            threading.Timer(0.3, hold, (api, 5)).start()
            seen = next(e for e in events(r.iter_lines()) if e.get("event") == "availability")
        change = json.loads(seen["data"])["changes"][0]
        assert (change["provider_id"], change["service"], change["remaining"]) == (
            "clinic-1",
            "vaccine",
            1,
        )
        assert change["start"].endswith("+00:00")
        # Disconnected: a change happens meanwhile; resuming from the last id replays it.
        held = hold(api, 6)
        with http.stream("GET", "/v1/feed", headers={"Last-Event-ID": seen["id"]}) as r:
            replayed = next(e for e in events(r.iter_lines()) if e.get("event") == "availability")
        assert entry(replayed["id"]) > entry(seen["id"])
        again = json.loads(replayed["data"])["changes"][0]
        assert datetime.fromisoformat(again["start"]) == datetime.fromisoformat(held["start"])
        assert again["remaining"] == 1
        assert api.delete(f"/v1/holds/{held['hold_id']}").status_code == 204


def test_feed_resume_from_a_trimmed_id_says_reset(base: str, api: httpx.Client) -> None:
    hold(api, 7)  # the stream has entries, so 0-1 is older than the oldest kept
    with api.stream("GET", "/v1/feed", params={"after": "0-1"}, timeout=20) as r:
        first = next(events(r.iter_lines()))
    assert first["event"] == "reset"


def test_feed_refuses_a_malformed_id(base: str, api: httpx.Client) -> None:
    assert_problem(
        api.get("/v1/feed", headers={"Last-Event-ID": "yesterday"}), 422, "validation_error"
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text``."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if want else name):
            return float(value)
    raise AssertionError(f"no sample {name}{{{want}}}")


def test_metrics_count_requests_holds_bookings_conflicts_batches_and_freshness(
    base: str, api: httpx.Client, stack: tuple[str, Hexbook, FastAPI]
) -> None:
    before = httpx.get(f"{base}/metrics").text
    h = hold(api, 8)
    b = api.post("/v1/bookings", json={"hold_id": h["hold_id"], "patient": {"reference": "m"}})
    assert b.status_code == 201
    start = slots(api, "clinic-1")[8]["start"]
    body = {"provider_id": "clinic-1", "service": "vaccine", "start": start, "party_size": 2}
    assert api.post("/v1/holds", json=body).status_code == 409
    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    after = r.text

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        try:
            old = metric(before, name, **labels)
        except AssertionError:
            old = 0.0
        return metric(after, name, **labels) - old >= by

    assert grew("hexbook_holds_placed_total")
    assert grew("hexbook_bookings_confirmed_total")
    assert grew("hexbook_conflicts_total", route="/v1/holds")
    assert grew("hexbook_http_requests_total", method="POST", route="/v1/holds", status="201")
    assert grew("hexbook_http_request_duration_seconds_count", method="POST", route="/v1/holds")
    assert metric(after, "hexbook_shard_batch_size_count") >= 2
    assert metric(after, "hexbook_index_age_seconds") >= 0
    assert metric(after, "hexbook_index_entries_applied") >= 1
    # Ids are never label values: routes are templates.
    assert h["hold_id"] not in after


def test_access_log_is_json_without_secrets(
    base: str, api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    def access() -> list[str]:
        return [JsonFormatter().format(r) for r in caplog.records if r.name == "hexbook.access"]

    with caplog.at_level(logging.INFO, logger="hexbook.access"):
        h = hold(api, 9)
        api.delete(f"/v1/holds/{h['hold_id']}")
        # The line is written once the answer went out: it may come just after it.
        until(lambda: any(json.loads(line)["method"] == "DELETE" for line in access()), 10)
    lines = access()
    parsed = [json.loads(line) for line in lines]
    deletes = [p for p in parsed if p["method"] == "DELETE"]
    assert deletes
    assert deletes[0]["route"] == "/v1/holds/{hold_id}"
    assert deletes[0]["status"] == 204
    assert deletes[0]["caller"].startswith("key:")
    assert all(h["hold_id"] not in line for line in lines)
