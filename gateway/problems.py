"""Errors as ``application/problem+json`` (RFC 9457) with a stable ``code``.

Every domain error of :mod:`engine.errors` maps to one HTTP status here; request
validation errors become 422 ``validation_error``; nothing a client sends can cause a
bare 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import errors
from gateway.auth import Forbidden, RateLimited, Unauthorized, retry_after_seconds

__all__ = ["STATUS", "install", "problem"]

log = logging.getLogger("hexbook.gateway")

STATUS: dict[type[errors.HexbookError], int] = {
    errors.IdempotencyConflict: 422,
    errors.InvalidRequest: 422,
    errors.ProviderNotFound: 404,
    errors.CalendarNotFound: 404,
    errors.HoldNotFound: 404,
    errors.BookingNotFound: 404,
    errors.NotFound: 404,
    errors.SlotUnavailable: 409,
    errors.BookingNotActive: 409,
    errors.ScheduleConflict: 409,
    errors.HoldExpired: 410,
    errors.Unavailable: 503,
    errors.CodecError: 400,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
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


def problem(
    status: int, code: str, detail: str, retry_after: float = 1.0, **extra: object
) -> JSONResponse:
    """A problem+json response; 429 and 503 say when to come back (``Retry-After``)."""
    body = {
        "type": f"https://hexbook.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    headers = {"Retry-After": retry_after_seconds(retry_after)} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def status_of(exc: errors.HexbookError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem."""

    @app.exception_handler(errors.HexbookError)
    async def domain(_: Request, exc: errors.HexbookError) -> JSONResponse:
        retry_after = exc.retry_after if isinstance(exc, RateLimited) else 1.0
        return problem(status_of(exc), exc.code, exc.message, retry_after)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        issues = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in issues)
        return problem(422, "validation_error", detail or "invalid request", errors=issues)

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
            415: "unsupported_media_type",
        }.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return problem(500, "internal", "an unexpected error happened; it was logged")
