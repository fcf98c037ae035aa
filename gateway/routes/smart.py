"""The SMART Scheduling Links feed: public, cached, rendered from the index."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Header, Path, Query, Request, Response

from engine.errors import NotFound
from gateway.deps import Caller, RuntimeDep
from gateway.interop.publish import SmartPublisher
from gateway.openapi import ANONYMOUS, errors
from gateway.schemas import SmartManifest

router = APIRouter(prefix="/smart", tags=["smart"])
_encode = msgspec.json.Encoder().encode
IfNoneMatch = Annotated[
    str | None, Header(alias="If-None-Match", max_length=200, description="an ETag seen before")
]
_ETAG = {"ETag": {"schema": {"type": "string"}, "required": True}}


def _responses(media_type: str, schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"content": {media_type: {"schema": schema}}, "headers": _ETAG},
        304: {"description": "Not modified (If-None-Match matched the ETag)", "headers": _ETAG},
    }


async def _refresh(pub: SmartPublisher) -> None:
    # Changed rows are copied here, in the loop that updates the index; rendering them
    # (JSON, time zones) runs in a thread so the gateway keeps serving.
    async with pub.lock:
        work = pub.collect()
        if work is not None:
            await asyncio.to_thread(pub.render, *work)


def _cached(
    pub: SmartPublisher, body: bytes, etag: str, media_type: str, seen: str | None
) -> Response:
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={int(pub.refresh_seconds)}"}
    if seen == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@router.get(
    "/$bulk-publish",
    response_class=Response,
    response_model=SmartManifest,
    responses=_responses("application/json", {"$ref": "#/components/schemas/SmartManifest"}),
    openapi_extra=ANONYMOUS,
)
async def bulk_publish(
    request: Request,
    _: Caller,
    rt: RuntimeDep,
    seen: IfNoneMatch = None,
    state: Annotated[str | None, Query(max_length=64, description="only this state")] = None,
) -> Response:
    """The manifest: Location, Schedule and Slot files (Slot files by state; ``state``
    keeps one). Slots are a day each, with the free places as ``slot-capacity``."""
    pub = rt.smart
    await _refresh(pub)
    base = str(request.base_url).rstrip("/")
    body = _encode(pub.manifest(base, str(request.url), state))
    etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
    return _cached(pub, body, etag, "application/json", seen)


@router.get(
    "/{name}",
    response_class=Response,
    responses={
        **_responses("application/fhir+ndjson", {"type": "string", "description": "NDJSON"}),
        **errors(404),
    },
    openapi_extra=ANONYMOUS,
)
async def smart_file(
    _: Caller,
    rt: RuntimeDep,
    seen: IfNoneMatch = None,
    name: str = Path(max_length=200, description="a file the manifest names"),
) -> Response:
    """One NDJSON file of the feed."""
    pub = rt.smart
    await _refresh(pub)
    if name not in pub.files:
        raise NotFound(f"no file {name!r} in the SMART feed; see /smart/$bulk-publish")
    return _cached(pub, pub.files[name], pub.etags[name], "application/fhir+ndjson", seen)
