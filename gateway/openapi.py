"""The OpenAPI document, as the server answers.

Routes name the statuses of their own (``responses=errors(404, 409)``); this module adds
what every operation may answer (401 for a bad key, 429, 503 with ``Retry-After``; 422
where there are parameters; 411, 413, 415 and 422 where there is a body), gives every
error the ``application/problem+json`` schema of :class:`gateway.schemas.Problem`, and
marks the operations open to anonymous callers (``security: [{}, {HTTPBearer: []}]``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.problems import MEDIA_TYPE, TITLES
from gateway.schemas import Problem

__all__ = ["ANONYMOUS", "errors", "event_stream", "install"]

ANONYMOUS: dict[str, Any] = {"x-anonymous": True}
_DESCRIPTIONS = {
    304: "Not modified (If-None-Match matched the ETag)",
    400: "Bad request",
    401: "No valid API key where one is needed, or an invalid one presented",
    403: "The key's role may not do this",
    404: "Not found",
    409: "Conflict: not enough free places, or the booking is not active",
    410: "Gone: the hold expired",
    411: "Length required (chunked bodies are refused)",
    413: "Body too large",
    415: "The body is not declared as JSON",
    422: "The request is malformed (validation_error) or reuses an Idempotency-Key",
    429: "Rate limited: come back after Retry-After seconds",
    503: "Redis or a shard is unavailable: retry after Retry-After seconds, same key",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"required": True, "schema": {"type": "string", "enum": ["Bearer"]}}
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these error statuses (given the problem schema here)."""
    return {s: {"description": _DESCRIPTIONS.get(s, TITLES.get(s, "Error"))} for s in statuses}


def event_stream(events: list[str], data: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a server-sent events route: the schema of one event as a client
    reads it (``event`` one of ``events``, ``data`` JSON of the schema ``data``; an ``id``
    and a ``retry`` where the stream sends them), the way OpenAPI 3.1 describes a stream."""
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": events},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }
    return {
        200: {
            "description": "Server-sent events",
            "content": {"text/event-stream": {"schema": event}},
        }
    }


def _problem(status: int, response: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": response.get("description") or _DESCRIPTIONS.get(status, "Error"),
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in (429, 503):
        out["headers"] = _RETRY_AFTER
    elif status == 401:
        out["headers"] = _WWW_AUTHENTICATE
    return out


def _operation(op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    extra = [401, 429, 503]
    if op.get("parameters"):
        extra.append(422)
    if "requestBody" in op:
        extra += [411, 413, 415, 422]
    for status in extra:
        responses.setdefault(str(status), {})
    for code, response in list(responses.items()):
        if code.isdigit() and int(code) >= 400:
            responses[code] = _problem(int(code), response)
    if op.pop("x-anonymous", False):
        op["security"] = [{}, {"HTTPBearer": []}]


def install(app: FastAPI) -> None:
    """Serve the document built here at ``/openapi.json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            for item in doc.get("paths", {}).values():
                for method, op in item.items():
                    if method in ("get", "put", "post", "delete", "patch"):
                        _operation(op)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}))
            schemas["Problem"] = problem
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
