"""Notifications end to end (issue 17): bookings, cancellations and a waitlist offer put
notices in the outbox with their commit; a deliverer (``hexbook deliver``, a process of
its own) delivers each to a real SMTP server or a webhook receiver that checks the
signatures. Killed mid-delivery, and a shard killed mid-booking, every notice still
arrives exactly once; a notice the channel keeps refusing becomes a dead letter, which
a replay delivers. Real Ray, real Redis, real SMTP, real HTTP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray
from fastapi import FastAPI

from actors import outbox
from actors.api import Hexbook
from tests.dates import ahead
from tests.gateway.sites import put_day_site
from tests.polling import until
from tests.redis_values import every_value
from tests.sinks import Sink, mail_text, smtp_server, webhook_receiver

pytestmark = pytest.mark.integration

SECRET = b"webhook-secret-of-the-tests"
DAY = ahead(5)
SERVICE = "nt-vaccine"


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    return {"index_first_day": None, "index_days": 20, "notify": False}  # deliverers: below


@pytest.fixture(scope="module")
def shard_options() -> dict[str, Any]:
    return {"offer_seconds": 600}


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[Sink, str, Sink, str]]:
    mail, hook = Sink(), Sink()
    with smtp_server(mail) as smtp_url, webhook_receiver(hook, SECRET) as hook_url:
        yield mail, smtp_url, hook, hook_url


def deliverer(hb: Hexbook, smtp_url: str, hook_url: str, **env: str) -> subprocess.Popen[str]:
    """``hexbook deliver`` in a process of its own, on the stack's Redis and keys."""
    assert hb.keyring is not None
    environ = {
        **os.environ,
        "HEXBOOK_SMTP_URL": smtp_url,
        "HEXBOOK_WEBHOOK_URL": hook_url,
        "HEXBOOK_WEBHOOK_SECRET": SECRET.decode(),
        "HEXBOOK_DATA_KEYS": hb.keyring.as_env(),
        "HEXBOOK_NOTIFY_BACKOFF_SECONDS": "0.05",
        **env,
    }
    cmd = [sys.executable, "-m", "gateway.cli", "deliver", "--redis-url", hb.redis_url]
    proc = subprocess.Popen(
        [*cmd, "--claim-idle", "1"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "delivering by email, webhook" in first, first + proc.stdout.read()
    return proc


@contextlib.contextmanager
def delivering(hb: Hexbook, smtp_url: str, hook_url: str, **env: str) -> Iterator[None]:
    """:func:`deliverer` for the length of a block."""
    proc = deliverer(hb, smtp_url, hook_url, **env)
    try:
        yield
    finally:
        kill(proc)


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.close()


def site(ops: httpx.Client, pid: str, capacity: int = 4) -> list[str]:
    return put_day_site(
        ops, pid, SERVICE, DAY, lat=41.75, lng=-87.60, capacity=capacity, closes="12:00"
    )


def retried(call: Any) -> httpx.Response:
    """A request repeated (same Idempotency-Key) while a shard restarts: 503 is retry."""
    answer: httpx.Response = until(lambda: (r := call()).status_code != 503 and r, seconds=60)
    return answer


def book(api: httpx.Client, pid: str, start: str, n: int) -> dict[str, Any]:
    contact = (
        {"email": f"nt-{n}@example.org", "language": "es" if n % 2 else "en"}
        if n % 3
        else {"phone": f"+1312555{n:04d}"}  # no e-mail: the webhook (an SMS gateway)
    )
    key = {"Idempotency-Key": f"nt-hold-{n}"}
    hold = retried(
        lambda: api.post(
            "/v1/holds", json={"provider_id": pid, "service": SERVICE, "start": start}, headers=key
        )
    )
    assert hold.status_code == 201, hold.text
    body = {
        "hold_id": hold.json()["hold_id"],
        "patient": {"reference": f"nt-{n}", "contact": contact},
    }
    key = {"Idempotency-Key": f"nt-book-{n}"}
    r = retried(lambda: api.post("/v1/bookings", json=body, headers=key))
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_every_notice_arrives_once_though_the_deliverer_and_a_shard_are_killed(
    stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
    api: httpx.Client,
    sinks: tuple[Sink, str, Sink, str],
) -> None:
    _, hb, _ = stack
    mail, smtp_url, hook, hook_url = sinks
    starts = site(ops, "nt-1")
    mail.hold(after=2)  # the sinks keep deliveries waiting: some in flight at the kill
    hook.hold(after=1)
    proc = deliverer(hb, smtp_url, hook_url)
    shard = hb.shard_of("nt-1")
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            made = list(pool.map(lambda n: book(api, "nt-1", starts[n % 12], n), range(12)))
            ray.kill(hb.shard(shard), no_restart=False)  # mid-booking: it recovers
            made += list(pool.map(lambda n: book(api, "nt-1", starts[n % 12], n), range(12, 30)))
        for b in made[:6]:  # some cancellations: one more notice each
            h = {"X-Booking-Token": b["booking_token"], "Idempotency-Key": f"c-{b['booking_id']}"}
            r = retried(lambda b=b, h=h: api.delete(f"/v1/bookings/{b['booking_id']}", headers=h))
            assert r.status_code == 204, r.text
        # The deliverer is killed while deliveries are in flight, and started again.
        until(lambda: len(mail.accepted) + len(hook.accepted) >= 3, seconds=60)
        until(lambda: mail.held + hook.held >= 1, seconds=60)
        kill(proc)
        mail.release()
        hook.release()
        proc = deliverer(hb, smtp_url, hook_url)
        expected = {f"booking.confirmed:{b['booking_id']}" for b in made}
        expected |= {f"booking.cancelled:{b['booking_id']}" for b in made[:6]}
        try:
            until(lambda: set(mail.accepted) | set(hook.accepted) >= expected, seconds=120)
        except AssertionError:
            missing = expected - set(mail.accepted) - set(hook.accepted)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(
                f"not delivered: {sorted(missing)}; {outbox.stats(hb.redis)}; {out}"
            ) from None
        delivered = [*mail.accepted, *hook.accepted]
        assert len(delivered) == len(set(delivered)) == len(expected)  # each once, one channel
        assert set(delivered) == expected  # and nothing that did not happen
        # A second arrival of a key can only be one the killed deliverer had sent and not
        # yet marked: at most the deliveries it had in flight (the sink answered it done).
        print(f"deliveries repeated after the kill: {mail.repeats} e-mail, {hook.repeats} webhook")
        assert mail.repeats + hook.repeats <= 16
        # E-mail where there was an address, the webhook otherwise; signed, in language.
        by_ref = {b["booking_id"]: int(b["patient"]["reference"][3:]) for b in made}
        for key in hook.accepted:
            assert by_ref[key.split(":")[1]] % 3 == 0
        for key, msg in mail.accepted.items():
            n = by_ref[key.split(":")[1]]
            assert msg["To"] == f"nt-{n}@example.org"
            text = mail_text(msg)
            if key.startswith("booking.confirmed") and n % 2:
                assert "su cita está reservada" in text and "hora estándar central" in text
                assert "Clinic nt-1" in text
            elif key.startswith("booking.confirmed"):
                assert "your appointment is booked" in text and "Central Standard Time" in text
        assert hook.refused == 0  # every webhook call carried a good signature
        until(lambda: outbox.stats(hb.redis)["waiting"] == 0)  # the outbox drains
        # Sealed in the outbox: no contact detail in clear anywhere in Redis.
        assert b"nt-1@example.org" not in every_value(hb.redis)
        metrics = httpx.get(f"{stack[0]}/metrics").text
        assert 'hexbook_notices{channel="email",outcome="delivered"}' in metrics
    finally:
        kill(proc)


def test_a_waitlisted_patient_is_told_of_the_offer_and_of_the_booking_once_each(
    stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
    api: httpx.Client,
    sinks: tuple[Sink, str, Sink, str],
) -> None:
    _, hb, _ = stack
    mail, smtp_url, _, hook_url = sinks
    starts = site(ops, "nt-2", capacity=1)
    taken = [book(api, "nt-2", s, 100 + i) for i, s in enumerate(starts)]
    joined = api.post(
        "/v1/waitlist",
        json={
            "service": SERVICE,
            "area": {"lat": 41.75, "lng": -87.60, "radius_km": 3},
            "earliest": f"{ahead(1)}T00:00:00Z",
            "latest": f"{ahead(9)}T00:00:00Z",
            "patient": {
                "reference": "nt-wait",
                "contact": {"email": "nt-wait@example.org", "language": "es"},
            },
        },
    )
    assert joined.status_code == 201, joined.text
    entry = joined.json()
    with delivering(hb, smtp_url, hook_url):
        victim = taken[3]
        r = api.delete(
            f"/v1/bookings/{victim['booking_id']}",
            headers={"X-Booking-Token": victim["booking_token"]},
        )
        assert r.status_code == 204
        offer = until(lambda: [m for k, m in mail.accepted.items() if k.startswith("offer.made:")])[
            0
        ]
        assert offer["To"] == "nt-wait@example.org"
        assert "Hay una plaza libre para usted" in offer["Subject"]
        token = {"X-Waitlist-Token": entry["waitlist_token"]}
        booked = api.post(f"/v1/waitlist/{entry['entry_id']}/booking", headers=token)
        assert booked.status_code == 201, booked.text
        bid = booked.json()["booking_id"]
        until(lambda: f"booking.confirmed:{bid}" in mail.accepted)
        mine = [k for k, m in mail.accepted.items() if m["To"] == "nt-wait@example.org"]
        assert sorted(k.split(":")[0] for k in mine) == ["booking.confirmed", "offer.made"]


def test_a_notice_the_channel_keeps_refusing_is_a_dead_letter_until_replayed(
    stack: tuple[str, Hexbook, FastAPI],
    ops: httpx.Client,
    api: httpx.Client,
    sinks: tuple[Sink, str, Sink, str],
) -> None:
    _, hb, _ = stack
    mail, smtp_url, _, hook_url = sinks
    starts = site(ops, "nt-3")
    b = book(api, "nt-3", starts[0], 301)  # 301 % 3 != 0: by e-mail
    key = f"booking.confirmed:{b['booking_id']}"
    mail.fail.add(key)
    cli = [sys.executable, "-m", "gateway.cli", "outbox"]
    env = {**os.environ, "HEXBOOK_DATA_KEYS": hb.keyring.as_env()}  # type: ignore[union-attr]
    with delivering(hb, smtp_url, hook_url, HEXBOOK_NOTIFY_ATTEMPTS="3"):
        until(lambda: outbox.stats(hb.redis)["dead"] == 1, seconds=60)
        dead = subprocess.run(
            [*cli, "dead", "--redis-url", hb.redis_url], capture_output=True, text=True, env=env
        )
        assert dead.returncode == 0 and "booking.confirmed" in dead.stdout, dead.stdout
        assert "tries=3" in dead.stdout and "SMTP 451" in dead.stdout
        assert key not in mail.accepted
        mail.fail.clear()  # the mail server is fixed: replay
        rep = subprocess.run(
            [*cli, "replay", "--all", "--redis-url", hb.redis_url],
            capture_output=True,
            text=True,
            env=env,
        )
        assert rep.returncode == 0 and "1 dead letter(s) back" in rep.stdout, rep.stdout
        until(lambda: key in mail.accepted)
        assert outbox.stats(hb.redis)["dead"] == 0
        nothing = subprocess.run(
            [*cli, "replay", "--redis-url", hb.redis_url], capture_output=True, text=True, env=env
        )
        assert nothing.returncode == 2 and "--all" in nothing.stderr
