"""``/v1/holds``: reserve places for a short time, release them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response

from gateway.answers import json_answer
from gateway.deps import Booker, IdempotencyKey, Service, json_body
from gateway.openapi import errors
from gateway.schemas import ROUTABLE_PATTERN, HoldOut, HoldRequest

router = APIRouter(prefix="/v1/holds", tags=["bookings"])


@router.post(
    "",
    status_code=201,
    response_model=HoldOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 409),
)
async def post_hold(
    body: HoldRequest, caller: Booker, service: Service, key: IdempotencyKey
) -> Response:
    """Reserve places in a slot for a short time (confirm with POST /v1/bookings)."""
    return json_answer(await service.hold(caller, body, key), 201)


@router.delete("/{hold_id}", status_code=204, responses=errors(403, 404))
async def delete_hold(
    caller: Booker,
    service: Service,
    key: IdempotencyKey,
    hold_id: str = Path(pattern=ROUTABLE_PATTERN, max_length=512),
) -> Response:
    """Release a hold: its places go back."""
    await service.release(caller, hold_id, key)
    return Response(status_code=204)
