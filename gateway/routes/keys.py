"""``/v1/keys``: API keys, for operators."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Response

from gateway.answers import json_answer
from gateway.deps import Operator, RuntimeDep, json_body
from gateway.keys import ApiKey
from gateway.openapi import errors
from gateway.schemas import KeyIn, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["operations"])
KeyId = Path(pattern="^[0-9a-f]{8}$", description="the 8 hex digits after hbk_")


def key_out(record: ApiKey, key: str | None = None) -> dict[str, Any]:
    """A key record as KeyOut (``key`` only at creation)."""
    return {
        "key_id": record.key_id,
        "role": record.role,
        "name": record.name,
        "providers": list(record.providers),
        "rate_per_second": record.rate_per_second,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "key": key,
    }


@router.post(
    "",
    status_code=201,
    response_model=KeyOut,
    dependencies=[Depends(json_body)],
    responses=errors(403),
)
async def create_key(body: KeyIn, _: Operator, rt: RuntimeDep) -> Response:
    """Create an API key. The answer shows the key once."""
    store = rt.keys
    key, record = await asyncio.to_thread(
        store.create, body.role, body.name, tuple(body.providers), body.rate_per_second
    )
    return json_answer(key_out(record, key), 201)


@router.get("", response_model=list[KeyOut], responses=errors(403))
async def list_keys(_: Operator, rt: RuntimeDep) -> Response:
    """Every key, revoked ones included (never the keys themselves)."""
    return json_answer([key_out(k) for k in await asyncio.to_thread(rt.keys.list)])


@router.delete("/{key_id}", response_model=KeyOut, responses=errors(403, 404))
async def revoke_key(_: Operator, rt: RuntimeDep, key_id: str = KeyId) -> Response:
    """Revoke a key; gateways stop accepting it within their key cache time."""
    return json_answer(key_out(await asyncio.to_thread(rt.keys.revoke, key_id)))
