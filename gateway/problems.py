"""Errors as ``application/problem+json`` (RFC 9457) with a stable ``code``: one function
for every way a request can fail, used by the FastAPI routes, the fast path and the
outermost middleware alike.

Every domain error of :mod:`engine.errors` maps to one HTTP status (the first class in
its MRO found in :data:`STATUS`); request validation errors become 422
``validation_error``; Redis or a shard being away is 503 ``unavailable`` with
``Retry-After``; nothing a client sends can cause a bare 500, and a 500 (a bug) is
logged once with its traceback, by hexbook, and answered as a problem.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from ray.exceptions import RayError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.series import SeriesAborted
from engine import errors
from gateway.answers import JsonAnswer
from gateway.auth import Forbidden, RateLimited, Unauthorized, retry_after_seconds

__all__ = [
    "MEDIA_TYPE",
    "STATUS",
    "TITLES",
    "UnsupportedMediaType",
    "install",
    "problem",
    "problem_of",
    "status_of",
]

log = logging.getLogger("hexbook.gateway")
MEDIA_TYPE = "application/problem+json"


class UnsupportedMediaType(errors.HexbookError):
    """A body that is not declared as JSON (415)."""

    code = "unsupported_media_type"


STATUS: dict[type[errors.HexbookError], int] = {
    errors.IdempotencyConflict: 422,
    errors.InvalidRequest: 422,
    errors.ProviderNotFound: 404,
    errors.CalendarNotFound: 404,
    errors.HoldNotFound: 404,
    errors.BookingNotFound: 404,
    errors.EntryNotFound: 404,
    errors.NoOffer: 409,
    errors.AlreadyWaiting: 409,
    errors.NotFound: 404,
    errors.SlotUnavailable: 409,
    errors.NotEligible: 403,
    errors.AdmissionRequired: 403,
    errors.AdmissionSpent: 409,
    errors.AlreadyQueued: 409,
    errors.RoomClosed: 409,
    errors.RoomExists: 409,
    SeriesAborted: 409,
    errors.BookingNotActive: 409,
    errors.ScheduleConflict: 409,
    errors.HoldExpired: 410,
    errors.Unavailable: 503,
    errors.KeyringError: 503,
    errors.CodecError: 400,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    UnsupportedMediaType: 415,
}
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    411: "Length required",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Unprocessable request",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    411: "length_required",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def problem(
    status: int,
    code: str,
    detail: str,
    retry_after: float = 1.0,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JsonAnswer:
    """A problem+json response; 429 and 503 say when to come back (``Retry-After``),
    401 which scheme to use (``WWW-Authenticate``)."""
    body = {
        "type": f"https://hexbook.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    out = dict(headers or {})
    if status in (429, 503):
        out["Retry-After"] = retry_after_seconds(retry_after)
    elif status == 401:
        out["WWW-Authenticate"] = "Bearer"
    # msgspec, as every JSON answer (gateway.answers): json.dumps through JSONResponse
    # cost eight times as much, and a launch answers a 409 to most of its holds.
    return JsonAnswer(body, status, MEDIA_TYPE, out)


def status_of(exc: errors.HexbookError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


class _Throttled:
    """Log a line about an outage at most every ``seconds`` (not one per request)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def warning(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last.get(what, -self.seconds) >= self.seconds:
            self._last[what] = now
            log.warning("%s: %s: %s (answering 503 meanwhile)", what, type(exc).__name__, exc)


_outages = _Throttled()


def _issues(raw: list[Any]) -> list[dict[str, Any]]:
    return [
        {"loc": [p for p in e.get("loc", ()) if isinstance(p, str | int)], "msg": e.get("msg", "")}
        for e in raw
    ]


def problem_of(exc: BaseException) -> JsonAnswer:
    """The answer to a request that raised ``exc``: the one mapping of errors to HTTP."""
    if isinstance(exc, errors.HexbookError):
        retry_after = exc.retry_after if isinstance(exc, RateLimited) else 1.0
        if isinstance(exc, errors.NotEligible):
            return problem(
                403,
                exc.code,
                exc.message,
                rule=exc.rule,
                rule_version=exc.version,
                reasons=list(exc.reasons),
            )
        if isinstance(exc, errors.AdmissionRequired):
            return problem(403, exc.code, exc.message, room=exc.room)
        return problem(status_of(exc), exc.code, exc.message, retry_after)
    if isinstance(exc, RequestValidationError | ValidationError):
        issues = _issues(list(exc.errors()))
        detail = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in issues)
        return problem(422, "validation_error", detail or "invalid request", errors=issues)
    if isinstance(exc, RecursionError):
        return problem(422, "validation_error", "the request is nested too deeply")
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not parse the body (nested too deeply...)
            return problem(422, "validation_error", f"the body is not readable JSON: {exc.detail}")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
    if isinstance(exc, RedisError):
        _outages.warning("Redis unreachable", exc)
        return problem(503, "unavailable", "hexbook's Redis is unreachable; retry shortly")
    if isinstance(exc, RayError):
        _outages.warning("shards unreachable", exc)
        return problem(503, "unavailable", "a shard is unreachable; retry shortly")
    log.error("unexpected error", exc_info=exc)
    return problem(500, "internal", "an unexpected error happened; it was logged")


def install(app: FastAPI) -> None:
    """Answer every error the routes raise with :func:`problem_of` (what escapes the
    routes is answered by :class:`gateway.observe.Observe` with the same function)."""

    async def handler(_: Request, exc: Exception) -> JsonAnswer:
        return problem_of(exc)

    for kind in (
        errors.HexbookError,
        RequestValidationError,
        StarletteHTTPException,
        RecursionError,
        RedisError,
        RayError,
    ):
        app.add_exception_handler(kind, handler)
