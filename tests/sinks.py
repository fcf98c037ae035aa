"""Where the notification tests and benchmarks deliver to: a real SMTP server (aiosmtpd)
and a webhook receiver that checks hexbook's signatures. Each is a *sink that checks the
delivery key*, as the deliverers expect: a second delivery of one key is answered as
done and not kept again (and counted, to show it happened)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request, Response

from gateway.deliver import verify
from gateway.server import in_thread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sink:
    """What arrived: accepted deliveries by key, and repeats. A
    test can :meth:`hold` deliveries at the door (to kill a deliverer while some are in
    flight) and :meth:`release` them."""

    accepted: dict[str, Any] = field(default_factory=dict)
    repeats: int = 0
    refused: int = 0  # bad signatures, forced failures
    fail: set[str] = field(default_factory=set)  # keys answered with a failure
    held: int = 0  # deliveries waiting at the door now
    hold_after: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    def hold(self, after: int) -> None:
        """Once ``after`` deliveries are accepted, keep the next ones waiting."""
        self.hold_after = after
        self.gate.clear()

    def release(self) -> None:
        self.hold_after = None
        self.gate.set()

    async def door(self) -> None:
        """Where a delivery waits while the sink holds them."""
        if self.hold_after is None or len(self.accepted) < self.hold_after:
            return
        with self.lock:
            self.held += 1
        try:
            await asyncio.to_thread(self.gate.wait, 120)
        finally:
            with self.lock:
                self.held -= 1

    def take(self, key: str, item: Any) -> bool:
        with self.lock:
            if key in self.accepted:
                self.repeats += 1
                return False
            self.accepted[key] = item
            return True


class _Mailbox:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        key = "".join(str(msg["X-Hexbook-Delivery"] or "").split())
        await self.sink.door()
        if key in self.sink.fail:
            self.sink.refused += 1
            return "451 try again later"
        self.sink.take(key, msg)
        return "250 OK"


@contextlib.contextmanager
def smtp_server(sink: Sink) -> Iterator[str]:
    """A real SMTP server on a free loopback port; its ``smtp://`` URL."""
    port = free_port()
    controller = Controller(_Mailbox(sink), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


@contextlib.contextmanager
def webhook_receiver(sink: Sink, secret: bytes) -> Iterator[str]:
    """An HTTP endpoint that accepts only calls signed with ``secret``; its URL."""
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        body = await request.body()
        if not verify(secret, request.headers, body, time.time()):
            sink.refused += 1
            return Response(status_code=401)
        key = request.headers.get("x-hexbook-delivery", "")
        await sink.door()
        if key in sink.fail:
            sink.refused += 1
            return Response(status_code=503)
        sink.take(key, await request.json())
        return Response(status_code=204)

    with in_thread(app, keep_alive_seconds=30) as url:
        yield f"{url}/hook"


def mail_text(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(msg.get_content_charset() or "utf-8")
