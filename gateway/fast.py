"""The fast path: well-formed hot requests served without FastAPI's per-request work.

A hold on the gateway spent most of its event-loop time in FastAPI's routing, dependency
solving and validation, not in hexbook (py-spy, ADR 0010), and then a third of what was
left in the middlewares it passed through (each wraps ``send``). This is the gateway's
front door (:class:`gateway.app.Gateway` calls it before FastAPI's stack): it serves
``POST /v1/holds``, ``POST /v1/bookings``, ``GET /v1/search`` and a waiting room's joins
and visitor views (the largest crowd of a launch day) itself when the request is one it
fully understands, and does for them what the middlewares would: the body limit, the
metrics and the access log (the same :class:`~gateway.observe.Watch`), the secure
headers (:func:`~gateway.headers.secure_headers`); none of these routes is audited. It
validates with the models of :mod:`gateway.schemas` (the one contract), asks the same
:class:`~gateway.auth.Authenticator`, calls the same
:class:`~gateway.service.BookingService` and answers errors with the same
:func:`~gateway.problems.problem_of`. Anything unusual (a body or query the models
refuse, a body not declared as JSON, a repeated or malformed header, a body over the
limit) goes on to FastAPI's whole stack untouched, the body replayed, so every answer to
a malformed request comes from one place and both ways answer alike.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_origin

from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.answers import json_answer
from gateway.auth import Principal, authorize, client_address
from gateway.deps import BOOKERS, Runtime, is_json
from gateway.headers import secure_headers
from gateway.observe import Watch
from gateway.problems import problem_of
from gateway.room import visitor_answer
from gateway.schemas import (
    ID_PATTERN,
    VISITOR_PATTERN,
    BookingRequest,
    HoldRequest,
    JoinIn,
    SearchQuery,
    idempotency_key_ok,
)
from gateway.service import BookingService

__all__ = ["FastPath", "query_values"]

log = logging.getLogger("hexbook.gateway")
Headers = list[tuple[bytes, bytes]]


class _Pass(Exception):
    """Not for the fast path: hand the request to FastAPI as it came."""


@dataclass(frozen=True, slots=True)
class _Route:
    path: str  # what Observe labels metrics with (as a FastAPI route's template)


_HOLDS, _BOOKINGS, _SEARCH = _Route("/v1/holds"), _Route("/v1/bookings"), _Route("/v1/search")
_JOIN = _Route("/v1/rooms/{room_id}/visitors")
_VIEW = _Route("/v1/rooms/{room_id}/visitors/{visitor_id}")
# /v1/rooms/<room>/visitors[/<visitor>], each part as the routes' patterns allow
_ROOM_PATH = re.compile(
    rf"/v1/rooms/({ID_PATTERN.strip('^$')})/visitors(?:/({VISITOR_PATTERN.strip('^$')}))?"
)


def query_values(model: type[BaseModel], params: QueryParams) -> dict[str, Any]:
    """The values FastAPI gives a query model: a list for list fields (when present),
    the last value otherwise."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if get_origin(field.annotation) is list:
            values = params.getlist(alias)
            if values:
                out[alias] = values
        elif alias in params:
            out[alias] = params[alias]
    return out


_CONTENT_TYPE, _IDEMPOTENCY_KEY, _AUTHORIZATION = 0, 1, 2
_READ = {b"content-type": _CONTENT_TYPE, b"idempotency-key": _IDEMPOTENCY_KEY,
         b"authorization": _AUTHORIZATION}  # fmt: skip


def _read(headers: Headers) -> list[str | None]:
    """Content-Type, Idempotency-Key and Authorization, in one pass; each may be sent at
    most once (else: not for the fast path)."""
    out: list[str | None] = [None, None, None]
    for name, value in headers:
        i = _READ.get(name)
        if i is not None:
            if out[i] is not None:
                raise _Pass
            out[i] = value.decode("latin-1")
    return out


class FastPath:
    """ASGI front door: the fast path for well-formed holds, bookings and searches;
    ``app`` (FastAPI with its middlewares) answers everything else."""

    def __init__(self, app: ASGIApp, watch: Watch) -> None:
        self.app = app
        self.watch = watch
        self.handlers: dict[
            tuple[str, str], Callable[[Scope, Headers, bytes], Awaitable[Response]]
        ] = {
            ("POST", "/v1/holds"): self._hold,
            ("POST", "/v1/bookings"): self._book,
            ("GET", "/v1/search"): self._search,
        }
        self.routes = {"/v1/holds": _HOLDS, "/v1/bookings": _BOOKINGS, "/v1/search": _SEARCH}
        self.served = 0  # requests the fast path answered, errors included (tests read it)
        self._runtime: Runtime | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.handlers.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        route = None
        if handler is None and scope["type"] == "http" and scope["path"].startswith("/v1/rooms/"):
            handler, route = self._room_handler(scope)
        if handler is None or self.watch.refuse(scope) is not None:
            await self.app(scope, receive, send)  # the stack answers a refusal, as ever
            return
        started = time.perf_counter()
        body = b""
        if scope["method"] == "POST":
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
        try:
            response = await handler(scope, scope["headers"], body)
        except _Pass:
            await self.app(scope, _replay(body, receive), send)
            return
        except Exception as exc:
            response = problem_of(exc)
        scope["route"] = route or self.routes[scope["path"]]
        self.served += 1
        # Sent as Response.__call__ would (these answers carry no background task),
        # with the secure headers added here rather than by a wrapped send.
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": secure_headers(response.raw_headers, scope.get("scheme") == "https"),
            }
        )
        await send({"type": "http.response.body", "body": response.body})
        self.watch.record(scope, response.status_code, started)

    def _room_handler(
        self, scope: Scope
    ) -> tuple[Callable[[Scope, Headers, bytes], Awaitable[Response]] | None, _Route | None]:
        m = _ROOM_PATH.fullmatch(scope["path"])
        if m is None:
            return None, None
        if scope["method"] == "POST" and m.group(2) is None:
            return self._join, _JOIN
        if scope["method"] == "GET" and m.group(2) is not None and not scope["query_string"]:
            return self._view, _VIEW
        return None, None

    async def _join(self, scope: Scope, headers: Headers, body: bytes) -> Response:
        content_type, _, authorization = _read(headers)
        req = self._body(content_type, body, JoinIn)
        caller = await self._caller(scope, authorization, None)
        m = _ROOM_PATH.fullmatch(scope["path"])
        assert m is not None
        rooms = self._rt(scope).service.rooms
        new, view = await rooms.join(m.group(1), caller, req)
        return visitor_answer(view, 201 if new else 200)

    async def _view(self, scope: Scope, headers: Headers, body: bytes) -> Response:
        caller = await self._caller(scope, _read(headers)[_AUTHORIZATION], None)
        m = _ROOM_PATH.fullmatch(scope["path"])
        assert m is not None
        rooms = self._rt(scope).service.rooms
        return visitor_answer(await rooms.visitor(m.group(1), m.group(2), caller))

    def _rt(self, scope: Scope) -> Runtime:
        """The app's parts (the lifespan built them; looked up once)."""
        if self._runtime is None:
            self._runtime = scope["app"].state.runtime
        return self._runtime

    async def _caller(
        self, scope: Scope, authorization: str | None, roles: tuple[str, ...] | None
    ) -> Principal:
        rt = self._rt(scope)
        principal = await rt.auth.principal(
            authorization, client_address(scope, rt.trusted_proxies)
        )
        scope.setdefault("state", {})["principal"] = principal
        return authorize(principal, roles)

    @staticmethod
    def _body(content_type: str | None, body: bytes, model: type[BaseModel]) -> Any:
        if not is_json(content_type):
            raise _Pass
        try:
            # pydantic parses the JSON itself (twice as fast as json.loads and then the
            # model). For these strict models of strings and integers that accepts exactly
            # what FastAPI's json.loads-then-validate does (the same last value of a
            # repeated key, too); whatever it refuses, FastAPI answers.
            return model.model_validate_json(body)
        except ValidationError:
            raise _Pass from None

    async def _hold(self, scope: Scope, headers: Headers, body: bytes) -> Response:
        return await self._mutation(scope, headers, body, HoldRequest, BookingService.hold)

    async def _book(self, scope: Scope, headers: Headers, body: bytes) -> Response:
        return await self._mutation(scope, headers, body, BookingRequest, BookingService.book)

    async def _mutation(
        self,
        scope: Scope,
        headers: Headers,
        body: bytes,
        model: type[BaseModel],
        verb: Callable[..., Awaitable[dict[str, Any]]],
    ) -> Response:
        content_type, key, authorization = _read(headers)
        req = self._body(content_type, body, model)
        if key is not None and not idempotency_key_ok(key):
            raise _Pass
        caller = await self._caller(scope, authorization, BOOKERS)
        return json_answer(await verb(self._rt(scope).service, caller, req, key), 201)

    async def _search(self, scope: Scope, headers: Headers, body: bytes) -> Response:
        params = QueryParams(scope["query_string"].decode("latin-1"))
        try:
            q = SearchQuery.model_validate(query_values(SearchQuery, params))
        except ValidationError:
            raise _Pass from None
        if q.series:
            raise _Pass  # a series search reads its template: the route answers it
        await self._caller(scope, _read(headers)[_AUTHORIZATION], None)
        return json_answer(self._rt(scope).service.search(q))


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
