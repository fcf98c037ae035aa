"""The audit trail: who (key id) did what admin action, to what, when, with what outcome.

Every operator and provider-admin action through the API (a provider or rule put, a key
made or revoked, a booking read or cancelled by an operator, an import run or
scheduled, a waiting room opened or changed) is appended, before its answer goes out,
to one Redis stream, ``hexbook:audit``; ``hexbook keys`` appends its own. The stream is only
ever appended to: the API reads it (``GET /v1/audit``, operators), ``hexbook audit-log``
prints it or writes CSV, and nothing offers to change or delete an entry. This module is
the one place that writes and reads the entries' format (docs/security.md).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "AUDITED",
    "STREAM",
    "AuditEntry",
    "AuditMiddleware",
    "AuditTrail",
    "append_sync",
    "entries_csv",
    "read_sync",
]

STREAM = "hexbook:audit"
# POSTs whose answer names what they made (the entry's target)
_MADE = {
    "/v1/keys": "key_id",
    "/v1/rooms": "room_id",
    "/v1/imports/schedules": "schedule_id",
    "/v1/erasures": "patient_ref",
}
log = logging.getLogger("hexbook.audit")

# (method, route template) -> action, for the callers it is an admin action of.
AUDITED: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("PUT", "/v1/providers/{provider_id}"): ("provider.put", ("operator", "provider-admin")),
    ("POST", "/v1/keys"): ("key.create", ("operator",)),
    ("DELETE", "/v1/keys/{key_id}"): ("key.revoke", ("operator",)),
    ("GET", "/v1/bookings/{booking_id}"): ("booking.read", ("operator",)),
    ("DELETE", "/v1/bookings/{booking_id}"): ("booking.cancel", ("operator",)),
    ("POST", "/v1/bookings/{booking_id}/attendance"): (
        "booking.attendance", ("operator", "provider-admin"),
    ),
    ("POST", "/v1/imports"): ("import.run", ("operator",)),
    ("POST", "/v1/imports/schedules"): ("import.schedule", ("operator",)),
    ("DELETE", "/v1/imports/schedules/{schedule_id}"): ("import.unschedule", ("operator",)),
    ("POST", "/v1/rooms"): ("room.open", ("operator",)),
    ("POST", "/v1/erasures"): ("patient.erase", ("operator",)),
    ("PATCH", "/v1/rooms/{room_id}"): ("room.change", ("operator",)),
    ("PUT", "/v1/rules/{service_id}"): ("rule.put", ("operator",)),
    ("PUT", "/v1/rules/{service_id}/providers/{provider_id}"): (
        "rule.put_provider", ("operator", "provider-admin"),
    ),
    ("PUT", "/v1/series-templates/{service_id}"): ("series_template.put", ("operator",)),
    ("PUT", "/v1/cells/{cell}/shard"): ("cell.move", ("operator",)),
    ("POST", "/v1/providers/{provider_id}/dedicated-shard"): ("provider.promote", ("operator",)),
    ("POST", "/v1/moves/resume"): ("moves.resume", ("operator",)),
}  # fmt: skip


@dataclass(frozen=True)
class AuditEntry:
    """One action: ``who`` is ``key:<id>`` (never the key) or ``cli:<user>``."""

    id: str
    at: str  # UTC, RFC 3339
    who: str
    role: str
    action: str
    target: str  # ``provider_id=chi-0001``, the path's ids
    status: int  # the HTTP status answered (0: a command, not a request)
    outcome: str  # ok, refused (4xx) or failed (5xx)

    @classmethod
    def decode(cls, entry_id: Any, fields: Any) -> AuditEntry:
        """An entry as the stream holds it (bytes, from redis-py)."""
        f = {_text(k): _text(v) for k, v in fields.items()}
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return cls(eid, f["at"], f["who"], f["role"], f["action"], f["target"],
                   int(f["status"]), f["outcome"])  # fmt: skip


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _fields(
    at: float, who: str, role: str, action: str, target: str, status: int
) -> dict[str, str]:
    outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
    return {
        "at": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
        "who": who, "role": role, "action": action, "target": target,
        "status": str(status), "outcome": outcome,
    }  # fmt: skip


def append_sync(
    client: redis.Redis, at: float, who: str, role: str, action: str, target: str
) -> str:
    """Append an entry from a command (``hexbook keys``): its stream id."""
    entry_id = client.xadd(STREAM, _fields(at, who, role, action, target, 0))  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _after(after: str) -> str:
    """The XRANGE start for the entries after ``after`` (``-``: from the first)."""
    return f"({after}" if after != "-" else "-"


def read_sync(client: redis.Redis, after: str = "-", limit: int | None = None) -> list[AuditEntry]:
    """Entries after ``after`` (a stream id; ``-``: from the first), oldest first."""
    raw: Any = client.xrange(STREAM, _after(after), "+", count=limit)
    return [AuditEntry.decode(i, f) for i, f in raw]


def entries_csv(entries: list[AuditEntry]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "at", "who", "role", "action", "target", "status", "outcome"])
    for e in entries:
        w.writerow(asdict(e).values())
    return out.getvalue()


class AuditTrail:
    """The gateway's side of the trail: append after an answer, read for operators."""

    def __init__(self, client: aioredis.Redis, seconds: Callable[[], float]) -> None:
        self.client, self.seconds = client, seconds
        self.failures = 0  # entries that could not be written (Redis down): logged

    async def record(self, who: str, role: str, action: str, target: str, status: int) -> None:
        fields = _fields(self.seconds(), who, role, action, target, status)
        try:
            await self.client.xadd(STREAM, fields)  # type: ignore[arg-type]
        except (redis.RedisError, OSError) as exc:
            self.failures += 1
            log.error("audit entry not written (%s): %s", type(exc).__name__, fields)

    async def read(self, after: str, limit: int) -> list[AuditEntry]:
        raw: Any = await self.client.xrange(STREAM, _after(after), "+", count=limit)
        return [AuditEntry.decode(i, f) for i, f in raw]


# What could be an admin action, by method: exact paths and path prefixes (the route is
# known only after the answer; this lets every other request through untouched).
_MAYBE: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "GET": (frozenset(), ("/v1/bookings/",)),
    "POST": (
        frozenset(
            {
                "/v1/keys",
                "/v1/imports",
                "/v1/imports/schedules",
                "/v1/rooms",
                "/v1/erasures",
                "/v1/moves/resume",
            }
        ),
        ("/v1/bookings/", "/v1/providers/"),
    ),
    "PUT": (
        frozenset(),
        ("/v1/providers/", "/v1/rules/", "/v1/series-templates/", "/v1/cells/"),
    ),
    "DELETE": (frozenset(), ("/v1/keys/", "/v1/bookings/", "/v1/imports/schedules/")),
    "PATCH": (frozenset(), ("/v1/rooms/",)),
}


def _maybe_audited(method: str, path: str) -> bool:
    exact, prefixes = _MAYBE.get(method, (frozenset(), ()))
    return path in exact or path.startswith(prefixes)


class AuditMiddleware:
    """ASGI middleware: an answer to an admin action (:data:`AUDITED`) by an operator or
    provider-admin goes out only once its entry is appended, so whoever saw the answer
    finds the entry, in the order the answers were given."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _maybe_audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)  # holds, searches, joins: untouched
            return
        made = _MADE.get(scope["path"]) if scope["method"] == "POST" else None
        held: Message | None = None  # a POST's start, until its body names what it made
        recorded = False

        async def watch(message: Message) -> None:
            nonlocal held, recorded
            if message["type"] == "http.response.start":
                if made is not None and message["status"] < 300:
                    held = message
                    return
                recorded = True
                await self._record(scope, message["status"], b"")
            elif held is not None and message["type"] == "http.response.body":
                start, held = held, None
                recorded = True
                body = message.get("body", b"") if not message.get("more_body") else b""
                await self._record(scope, start["status"], body)
                await send(start)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not recorded:  # no answer at all (the client went away): still the attempt
                await self._record(scope, 500, b"")

    @staticmethod
    async def _record(scope: Scope, status: int, body: bytes) -> None:
        route = getattr(scope.get("route"), "path", None)
        audited = AUDITED.get((scope["method"], route or ""))
        principal: Any = scope.get("state", {}).get("principal")
        if audited is None or principal is None or principal.role not in audited[1]:
            return
        trail: AuditTrail | None = getattr(scope["app"].state.runtime, "audit", None)
        if trail is None:
            return
        params = dict(scope.get("path_params") or {})
        name = _MADE.get(scope["path"])
        if body and name is not None:  # what a POST made: its id from the answer
            with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
                params[name] = str(json.loads(body)[name])
        target = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
        await trail.record(principal.name, principal.role, audited[0], target, status)
