"""``/v1/rules``: who may book a service, in numbered versions (operators publish)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response

from gateway.answers import json_answer
from gateway.deps import Operator, Service, json_body
from gateway.openapi import errors
from gateway.schemas import ID_PATTERN, RuleIn, RuleOut

router = APIRouter(prefix="/v1/rules", tags=["eligibility"])
ServiceId = Path(pattern=ID_PATTERN, max_length=64)
ProviderId = Path(pattern=ID_PATTERN, max_length=64)


@router.put(
    "/{service_id}",
    status_code=201,
    response_model=RuleOut,
    dependencies=[Depends(json_body)],
    responses=errors(403),
)
async def put_rule(
    body: RuleIn, caller: Operator, service: Service, service_id: str = ServiceId
) -> Response:
    """Publish the next version of the service's rule, in force from now at every site
    without a rule of its own. Existing bookings are kept; those the new version would
    refuse are listed in ``would_refuse`` for a person to decide."""
    return json_answer(await service.publish_rule(service_id, None, body), 201)


@router.put(
    "/{service_id}/providers/{provider_id}",
    status_code=201,
    response_model=RuleOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404),
)
async def put_provider_rule(
    body: RuleIn,
    caller: Operator,
    service: Service,
    service_id: str = ServiceId,
    provider_id: str = ProviderId,
) -> Response:
    """Publish the next version of one provider's own rule for the service (it takes
    the place of the service's rule there)."""
    return json_answer(await service.publish_rule(service_id, provider_id, body), 201)


@router.get("/{service_id}", response_model=list[RuleOut], responses=errors(403))
async def get_rules(caller: Operator, service: Service, service_id: str = ServiceId) -> Response:
    """Every version of the service's rule, oldest first (the last is in force)."""
    return json_answer(await service.rules(service_id, None))
