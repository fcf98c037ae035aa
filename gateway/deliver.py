"""Deliverers: read the outbox (:mod:`actors.outbox`), write each notice in the
patient's language, deliver it once to the patient's channel.

The channel in effect: e-mail through SMTP when the patient gave an address and SMTP is
configured, else the signed webhook when one is configured (an SMS gateway or the
front-end; it gets the phone number), else none (the notice is counted as skipped).

Once: a deliverer reads in the consumer group ``deliverers``, so each notice goes to one
deliverer; it marks a notice delivered (``hexbook:outbox:delivered:<id>``) and only then
acknowledges it, and skips one marked already. A deliverer that dies between the send
and the mark leaves the notice pending; another (or it, restarted) claims it after
``claim_idle_seconds`` and sends it again *with the same delivery key*, which the
channel checks: the e-mail's ``Message-ID`` (and ``X-Hexbook-Delivery``), the webhook's
``X-Hexbook-Delivery``. A failed send is retried with exponential back-off (tenacity),
``attempts`` times in all, then dead-lettered; ``hexbook outbox replay`` puts it back.

The webhook's calls are signed as Stripe-style webhooks are: ``X-Hexbook-Timestamp``
(Unix seconds) and ``X-Hexbook-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." +
body)>``; :func:`verify` checks one (and refuses one older than five minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import hashlib
import hmac
import json
import logging
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import httpx
import jinja2
import redis.asyncio as aioredis
from babel.dates import format_datetime
from redis.exceptions import RedisError, ResponseError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from actors import outbox
from actors.sealing import Keyring
from engine.notices import Notice
from gateway.settings import Settings
from gateway.timefmt import format_local

__all__ = [
    "Deliverer",
    "Email",
    "Message",
    "Templates",
    "Webhook",
    "deliverer_of",
    "signature",
    "verify",
]

log = logging.getLogger("hexbook.deliver")
LANGUAGES = ("en", "es")


class Message(NamedTuple):
    subject: str
    text: str


class Templates:
    """One template per kind and language (``gateway/messages/<kind>.<lang>.txt``, its
    first line the subject), times in the site's zone, written the language's way."""

    def __init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway", "messages"),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain text mail; the webhook carries it as JSON
            keep_trailing_newline=True,
        )

    def render(self, n: Notice) -> Message:
        lang = n.contact.language if n.contact.language in LANGUAGES else "en"
        zone = ZoneInfo(n.timezone)

        def when(ts: int) -> str:
            return str(format_datetime(datetime.fromtimestamp(ts, zone), "full", locale=lang))

        text = self.env.get_template(f"{n.kind}.{lang}.txt").render(
            site=n.site,
            service=n.service,
            when=when(n.start),
            zone=n.timezone,
            old_when=when(n.old_start) if n.old_start is not None else "",
            expires=when(n.expires_at) if n.expires_at is not None else "",
            booking_id=n.booking_id or "",
        )
        first, _, body = text.partition("\n")
        return Message(first.removeprefix("Subject: ").strip(), body)


class DeliveryFailed(Exception):
    """A send that failed; ``temporary``: worth trying again."""

    def __init__(self, why: str, temporary: bool = True) -> None:
        super().__init__(why)
        self.temporary = temporary


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The webhook's ``X-Hexbook-Signature`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify(
    secret: bytes, headers: Mapping[str, str], body: bytes, now: float, tolerance: float = 300
) -> bool:
    """Whether a webhook call is hexbook's: its signature matches and it is recent."""
    stamp = headers.get("x-hexbook-timestamp", "")
    given = headers.get("x-hexbook-signature", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(given, signature(secret, stamp, body))


# Headers are not folded short of SMTP's own limit: a delivery key stays on one line.
_MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)


def message_id(notice_id: str) -> str:
    """The e-mail's Message-ID: one per notice (a notice id has characters a Message-ID
    may not, so its digest)."""
    return f"<{hashlib.sha256(notice_id.encode()).hexdigest()[:32]}@hexbook>"


@dataclass(frozen=True)
class Email:
    """SMTP: ``smtp://[user:password@]host[:port]``, ``smtp+starttls://`` or ``smtps://``."""

    url: str
    sender: str
    timeout: float = 10.0
    name: str = "email"

    async def send(self, n: Notice, m: Message) -> None:
        if n.contact.email is None:
            raise DeliveryFailed("no e-mail address", temporary=False)
        mail = EmailMessage(policy=_MAIL_POLICY)
        mail["From"], mail["To"], mail["Subject"] = self.sender, n.contact.email, m.subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = message_id(n.notice_id)
        mail["X-Hexbook-Delivery"] = n.notice_id
        mail["Content-Language"] = n.contact.language
        mail.set_content(m.text)
        try:
            await asyncio.to_thread(self._send, mail)
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryFailed(f"refused: {exc}", temporary=False) from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"SMTP {exc.smtp_code}", temporary=exc.smtp_code < 500) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc

    def _send(self, mail: EmailMessage) -> None:
        u = urlsplit(self.url)
        host = u.hostname or "localhost"
        if u.scheme == "smtps":
            ctx = ssl.create_default_context()
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                host, u.port or 465, timeout=self.timeout, context=ctx
            )
        else:
            client = smtplib.SMTP(host, u.port or 25, timeout=self.timeout)
        with client:
            if u.scheme == "smtp+starttls":
                client.starttls(context=ssl.create_default_context())
            if u.username:
                client.login(unquote(u.username), unquote(u.password or ""))
            client.send_message(mail)


@dataclass
class Webhook:
    """A signed POST of the notice, written out, to ``url``."""

    url: str
    secret: bytes
    client: httpx.AsyncClient
    name: str = "webhook"

    async def send(self, n: Notice, m: Message) -> None:
        body = json.dumps(
            {
                "delivery": n.notice_id,
                "kind": n.kind,
                "language": n.contact.language,
                "to": {"email": n.contact.email, "phone": n.contact.phone},
                "subject": m.subject,
                "text": m.text,
                "patient_ref": n.patient_ref,
                "provider_id": n.provider_id,
                "service": n.service,
                "start": format_local(n.start, n.timezone),
                "booking_id": n.booking_id,
                "hold_id": n.hold_id,
                "entry_id": n.entry_id,
                "expires_at": None
                if n.expires_at is None
                else format_local(n.expires_at, n.timezone),
            },
            separators=(",", ":"),
        ).encode()
        stamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "x-hexbook-delivery": n.notice_id,
            "x-hexbook-timestamp": stamp,
            "x-hexbook-signature": signature(self.secret, stamp, body),
        }
        try:
            r = await self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        if r.status_code >= 300:
            permanent = 400 <= r.status_code < 500 and r.status_code not in (408, 429)
            raise DeliveryFailed(f"webhook answered {r.status_code}", temporary=not permanent)


class Deliverer:
    """One consumer of the outbox. ``run`` until cancelled; ``step`` for one round."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keyring: Keyring | None,
        email: Email | None,
        webhook: Webhook | None,
        *,
        consumer: str | None = None,
        attempts: int = 8,
        backoff_seconds: float = 0.5,
        concurrency: int = 16,
        claim_idle_seconds: float = 300.0,
        block_ms: int = 1000,
    ) -> None:
        self.redis, self.keyring = redis, keyring
        self.email, self.webhook = email, webhook
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.attempts, self.backoff = attempts, backoff_seconds
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.block_ms = block_ms
        self.templates = Templates()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0  # by this deliverer (tests, logs)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(outbox.OUTBOX, outbox.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Deliver until cancelled; Redis away: wait and carry on."""
        while True:
            try:
                await self.ensure_group()
                while True:
                    await self.step()
            except (RedisError, OSError) as exc:
                log.warning("deliverer %s: Redis: %s; retrying in 1 s", self.consumer, exc)
                await asyncio.sleep(1.0)

    async def step(self, count: int = 64) -> int:
        """Claim what a dead deliverer left, read what is new, and start delivering it;
        returns how many notices were started."""
        started = 0
        _, claimed, *_ = await self.redis.xautoclaim(
            outbox.OUTBOX, outbox.GROUP, self.consumer, self.claim_idle_ms, "0-0", count=count
        )
        for entry_id, fields in claimed:
            if fields:  # an entry deleted meanwhile comes back without fields
                started += await self._start(entry_id, fields)
        got: Any = await self.redis.xreadgroup(
            outbox.GROUP, self.consumer, {outbox.OUTBOX: ">"}, count=count, block=self.block_ms
        )
        for _, rows in got or []:
            for entry_id, fields in rows:
                started += await self._start(entry_id, fields)
        return started

    async def _start(self, entry_id: bytes, fields: dict[bytes, bytes]) -> int:
        await self._slots.acquire()
        task = asyncio.create_task(self._deliver(entry_id, fields))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return 1

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("deliverer %s: %s: %s", self.consumer, type(exc).__name__, exc)

    async def drain(self) -> None:
        """Wait for the deliveries started (tests; a clean stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def channel_for(self, n: Notice) -> Email | Webhook | None:
        if n.contact.email is not None and self.email is not None:
            return self.email
        return self.webhook

    async def _deliver(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        raw = fields.get(b"n", b"")
        try:
            n = outbox.open_notice(self.keyring, raw)
        except Exception as exc:  # undecodable or sealed with a key we lack: not retried
            await self._dead(entry_id, raw, None, f"cannot open: {exc}", 0)
            return
        done = outbox.delivered_key(n.notice_id)
        if await self.redis.exists(done):
            await self._ack(entry_id)  # made twice, or delivered before a crash
            return
        channel = self.channel_for(n)
        if channel is None:
            await self.redis.hincrby(outbox.STATS, "skipped", 1)
            await self._ack(entry_id)
            return
        message = self.templates.render(n)
        tries = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=self.backoff, max=60),
                retry=retry_if_exception(lambda e: isinstance(e, DeliveryFailed) and e.temporary),
                reraise=True,
            ):
                with attempt:
                    tries += 1
                    try:
                        await channel.send(n, message)
                    except DeliveryFailed:
                        await self.redis.hincrby(outbox.STATS, "failed", 1)
                        raise
        except DeliveryFailed as exc:
            await self._dead(entry_id, raw, n, str(exc), tries)
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(done, channel.name, ex=outbox.DELIVERED_TTL_SECONDS)
        pipe.hincrby(outbox.STATS, f"delivered:{channel.name}", 1)
        pipe.xack(outbox.OUTBOX, outbox.GROUP, entry_id)
        pipe.xdel(outbox.OUTBOX, entry_id)
        await pipe.execute()
        self.delivered += 1

    async def _ack(self, entry_id: bytes) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(outbox.OUTBOX, outbox.GROUP, entry_id)
        pipe.xdel(outbox.OUTBOX, entry_id)
        await pipe.execute()

    async def _dead(
        self, entry_id: bytes, raw: bytes, n: Notice | None, reason: str, tries: int
    ) -> None:
        log.warning("deliverer %s: dead letter %s: %s", self.consumer, entry_id, reason)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(
            outbox.DEAD,
            {
                "n": raw,
                "notice_id": "" if n is None else n.notice_id,
                "kind": "" if n is None else n.kind,
                "reason": reason[:500],
                "attempts": tries,
                "at": int(time.time()),
            },
        )
        pipe.hincrby(outbox.STATS, "dead", 1)
        pipe.xack(outbox.OUTBOX, outbox.GROUP, entry_id)
        pipe.xdel(outbox.OUTBOX, entry_id)
        await pipe.execute()


async def deliverer_of(
    settings: Settings, redis_url: str, keyring: Keyring | None, stack: contextlib.AsyncExitStack
) -> Deliverer:
    """A :class:`~gateway.deliver.Deliverer` with the channels ``settings`` configure
    (``stack`` closes its connections); for the gateway and ``hexbook deliver``."""
    email = Email(settings.smtp_url, settings.smtp_from) if settings.smtp_url else None
    webhook = None
    if settings.webhook_url:
        if settings.webhook_secret is None:
            raise ValueError("HEXBOOK_WEBHOOK_URL needs HEXBOOK_WEBHOOK_SECRET to sign its calls")
        client = httpx.AsyncClient(timeout=10.0)
        stack.push_async_callback(client.aclose)
        secret = settings.webhook_secret.get_secret_value().encode()
        webhook = Webhook(settings.webhook_url, secret, client)
    conn = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    stack.push_async_callback(conn.aclose)
    return Deliverer(
        conn,
        keyring,
        email,
        webhook,
        attempts=settings.notify_attempts,
        backoff_seconds=settings.notify_backoff_seconds,
        concurrency=settings.notify_concurrency,
    )
