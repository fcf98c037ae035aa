"""The fast path: well-formed hot requests served without FastAPI's per-request work.

A hold on the gateway spent most of its event-loop time in FastAPI's routing, dependency
solving and validation, not in hexbook (py-spy, ADR 0010). This ASGI middleware sits
inside :class:`gateway.observe.Observe` (so body limits, metrics and the access log
apply) and serves ``POST /v1/holds``, ``POST /v1/bookings`` and ``GET /v1/search``
directly when the request is one it fully understands:

- the body decodes (msgspec) into the same fields and limits as the pydantic models of
  :mod:`gateway.schemas`; the query parameters parse as the FastAPI route declares;
- the caller presents ``Authorization: Bearer <key>`` of a role that may do this (search
  may also come with no Authorization header at all, as an anonymous caller).

The work itself is :class:`gateway.hot.Hot`, the same code the FastAPI routes call;
domain errors become the same problem+json answers. Anything else -- a malformed body,
a missing or wrong key, an unknown field -- goes on to FastAPI untouched (the body
replayed), which answers it as it always has: error answers come from one place.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec
from msgspec import Meta
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import HexbookError
from gateway import problems
from gateway.auth import Authenticator, Principal, RateLimited
from gateway.hot import Hot

__all__ = ["FastPath"]

log = logging.getLogger("hexbook.gateway")

# As gateway.schemas._ID, with \Z: Python's $ would also match before a final newline.
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z"
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_SERVICE = re.compile(_ID)
_BOOKERS = ("booking-client", "operator")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class _HoldBody(msgspec.Struct, forbid_unknown_fields=True):
    provider_id: Annotated[str, Meta(pattern=_ID)]
    service: Annotated[str, Meta(pattern=_ID)]
    start: str
    party_size: Annotated[int, Meta(ge=1, le=50)] = 1


class _Patient(msgspec.Struct, forbid_unknown_fields=True):
    reference: Annotated[str, Meta(min_length=1, max_length=128)]


class _BookingBody(msgspec.Struct, forbid_unknown_fields=True):
    hold_id: Annotated[str, Meta(min_length=24, max_length=512)]
    patient: _Patient


_hold_body = msgspec.json.Decoder(_HoldBody)
_booking_body = msgspec.json.Decoder(_BookingBody)
_encode = msgspec.json.Encoder().encode


class _Pass(Exception):
    """Not for the fast path: hand the request to FastAPI as it came."""


@dataclass(frozen=True, slots=True)
class _Route:
    path: str  # what Observe labels metrics with (as a FastAPI route's template)


_HOLDS, _BOOKINGS, _SEARCH = _Route("/v1/holds"), _Route("/v1/bookings"), _Route("/v1/search")


def _float(text: str | None, default: float | None, low: float, high: float, gt: bool) -> float:
    if text is None:
        if default is None:
            raise _Pass
        return default
    if not _FLOAT.match(text):
        raise _Pass
    value = float(text)
    if not math.isfinite(value) or value > high or (value <= low if gt else value < low):
        raise _Pass
    return value


def _int(text: str | None, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not _INT.match(text):
        raise _Pass
    value = int(text)
    if not low <= value <= high:
        raise _Pass
    return value


class FastPath:
    """ASGI middleware: the fast path for well-formed holds, bookings and searches."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.handlers: dict[tuple[str, str], Callable[..., Awaitable[tuple[_Route, Any]]]] = {
            ("POST", "/v1/holds"): self._hold,
            ("POST", "/v1/bookings"): self._book,
            ("GET", "/v1/search"): self._search,
        }
        self.served = 0  # requests the fast path answered, errors included (tests read it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.handlers.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        body = b""
        if scope["method"] == "POST":
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
        headers = dict(scope["headers"])
        try:
            route, out = await handler(scope, headers, body)
        except _Pass:
            await self.app(scope, _replay(body, receive), send)
            return
        except HexbookError as exc:
            self.served += 1
            scope["route"] = route_of(scope)
            retry_after = exc.retry_after if isinstance(exc, RateLimited) else 1.0
            answer = problems.problem(problems.status_of(exc), exc.code, exc.message, retry_after)
            await answer(scope, receive, send)
            return
        scope["route"] = route
        self.served += 1
        status = 201 if scope["method"] == "POST" else 200
        await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": _encode(out)})

    async def _caller(
        self, scope: Scope, headers: dict[bytes, bytes], roles: tuple[str, ...] | None
    ) -> Principal:
        """The caller, rate-limited; ``roles`` None: anonymous callers too."""
        app = scope["app"]
        auth: Authenticator = app.state.auth
        client = scope.get("client")
        address = client[0] if client else "unknown"
        raw = headers.get(b"authorization")
        if raw is None:
            if roles is not None:
                raise _Pass  # FastAPI answers 401
            principal = Principal(None, address)
        else:
            scheme, _, key = raw.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not key or " " in key:
                raise _Pass
            record = await auth.key(key)
            if record is None or (roles is not None and record.role not in roles):
                raise _Pass  # FastAPI answers 401 or 403
            principal = Principal(record, address)
        auth.limit(principal)
        scope.setdefault("state", {})["principal"] = principal
        return principal

    @staticmethod
    def _idempotency_key(headers: dict[bytes, bytes]) -> str | None:
        raw = headers.get(b"idempotency-key")
        if raw is None:
            return None
        if len(raw) > 200:
            raise _Pass  # FastAPI answers 422
        return raw.decode("latin-1")

    @staticmethod
    def _json(headers: dict[bytes, bytes]) -> None:
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            raise _Pass

    async def _hold(
        self, scope: Scope, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[_Route, Any]:
        self._json(headers)
        try:
            req = _hold_body.decode(body)
        except msgspec.DecodeError:  # ValidationError included
            raise _Pass from None
        key = self._idempotency_key(headers)
        caller = await self._caller(scope, headers, _BOOKERS)
        hot: Hot = scope["app"].state.hot
        out = await hot.hold(caller, req.provider_id, req.service, req.start, req.party_size, key)
        return _HOLDS, out

    async def _book(
        self, scope: Scope, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[_Route, Any]:
        self._json(headers)
        try:
            req = _booking_body.decode(body)
        except msgspec.DecodeError:
            raise _Pass from None
        key = self._idempotency_key(headers)
        caller = await self._caller(scope, headers, _BOOKERS)
        hot: Hot = scope["app"].state.hot
        return _BOOKINGS, await hot.book(caller, req.hold_id, req.patient.reference, key)

    async def _search(
        self, scope: Scope, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[_Route, Any]:
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        q = dict(pairs)  # the last of a repeated parameter wins, as in Starlette
        lat = _float(q.get("lat"), None, -90, 90, gt=False)
        lng = _float(q.get("lng"), None, -180, 180, gt=False)
        radius_km = _float(q.get("radius_km"), 10.0, 0, 100, gt=True)
        service = q.get("service")
        if service is None or not _SERVICE.match(service):
            raise _Pass
        order = q.get("order", "distance")
        if order not in ("distance", "earliest"):
            raise _Pass
        limit = _int(q.get("limit"), 20, 1, 100)
        party_size = _int(q.get("party_size"), 1, 1, 50)
        lists: dict[str, list[str]] = {"language": [], "accessibility": [], "insurance": []}
        for name, value in pairs:
            if name in lists:
                lists[name].append(value)
        await self._caller(scope, headers, None)
        hot: Hot = scope["app"].state.hot
        out = hot.search(
            lat, lng, service, radius_km, q.get("from"), q.get("to"), limit, party_size,
            lists["language"], lists["accessibility"], lists["insurance"], order,
        )  # fmt: skip
        return _SEARCH, out


def route_of(scope: Scope) -> _Route:
    return {"/v1/holds": _HOLDS, "/v1/bookings": _BOOKINGS}.get(scope["path"], _SEARCH)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then whatever comes next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
