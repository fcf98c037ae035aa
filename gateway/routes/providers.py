"""``/v1/providers``: a provider, its slot grid, and its schedule (provider admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from gateway.answers import json_answer
from gateway.deps import Admin, Caller, Service, json_body
from gateway.openapi import ANONYMOUS, errors
from gateway.schemas import ID_PATTERN, ProviderIn, ProviderOut, SlotsOut, SlotsQuery
from gateway.service import provider_out

router = APIRouter(prefix="/v1/providers", tags=["providers"])
ProviderId = Path(pattern=ID_PATTERN, description="1 to 128 of A-Z a-z 0-9 . _ : -")


@router.get(
    "/{provider_id}", response_model=ProviderOut, responses=errors(404), openapi_extra=ANONYMOUS
)
async def get_provider(_: Caller, service: Service, provider_id: str = ProviderId) -> Response:
    """One provider: name, position, time zone, services."""
    return json_answer(provider_out(await service.provider(provider_id)))


@router.get(
    "/{provider_id}/slots",
    response_model=SlotsOut,
    responses=errors(404),
    openapi_extra=ANONYMOUS,
)
async def get_slots(
    q: Annotated[SlotsQuery, Query()], _: Caller, service: Service, provider_id: str = ProviderId
) -> Response:
    """The slot grid with remaining places (authoritative, from the shard)."""
    return json_answer(await service.slots(provider_id, q))


@router.put(
    "/{provider_id}",
    response_model=ProviderOut,
    dependencies=[Depends(json_body)],
    responses={201: {"description": "Created", "model": ProviderOut}, **errors(403, 409)},
)
async def put_provider(
    body: ProviderIn, caller: Admin, service: Service, provider_id: str = ProviderId
) -> Response:
    """Create (201) or replace (200) a provider and its schedule: an operator, or a
    provider-admin key that names it. A change that would drop bookings or holds is a
    409 and changes nothing."""
    out, created = await service.put_provider(caller, provider_id, body)
    return json_answer(out, 201 if created else 200)
