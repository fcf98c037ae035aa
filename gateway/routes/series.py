"""``/v1/series``: dose series, every dose booked or none (templates set by operators)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response

from gateway.answers import json_answer
from gateway.deps import Booker, BookingToken, IdempotencyKey, Operator, Service, json_body
from gateway.openapi import errors
from gateway.schemas import (
    ID_PATTERN,
    ROUTABLE_PATTERN,
    SeriesBookingRequest,
    SeriesHoldRequest,
    SeriesOut,
    SeriesRescheduleRequest,
    SeriesTemplateIn,
    SeriesTemplateOut,
)
from gateway.service import series_out

router = APIRouter(tags=["series"])
SeriesId = Path(pattern=ROUTABLE_PATTERN, max_length=512)


@router.put(
    "/v1/series-templates/{service_id}",
    response_model=SeriesTemplateOut,
    dependencies=[Depends(json_body)],
    responses=errors(403),
)
async def put_template(
    body: SeriesTemplateIn,
    caller: Operator,
    service: Service,
    service_id: str = Path(pattern=ID_PATTERN, max_length=64),
) -> Response:
    """Set when the next dose of a service falls (``min_days`` to ``max_days`` after)."""
    return json_answer(await service.put_series_template(service_id, body))


@router.post(
    "/v1/series/holds",
    status_code=201,
    response_model=SeriesOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 409),
)
async def post_series_hold(
    body: SeriesHoldRequest, caller: Booker, service: Service, key: IdempotencyKey
) -> Response:
    """Hold dose 1 and dose 2 together: dose 2 at ``second.start``, or the earliest slot
    with room in the template's window. Both holds or neither."""
    return json_answer(await service.series_hold(caller, body, key), 201)


@router.post(
    "/v1/series/bookings",
    status_code=201,
    response_model=SeriesOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 409),
)
async def post_series_booking(
    body: SeriesBookingRequest, caller: Booker, service: Service, key: IdempotencyKey
) -> Response:
    """Confirm every dose or none (409 series_aborted: none is booked). A 503 means a
    shard did not answer: repeat with the same Idempotency-Key and it carries on."""
    return json_answer(await service.series_book(caller, body, key), 201)


@router.get("/v1/series/{series_id}", response_model=SeriesOut, responses=errors(403, 404))
async def get_series(
    caller: Booker, service: Service, token: BookingToken = None, series_id: str = SeriesId
) -> Response:
    """Read a series (its booking token in X-Booking-Token, or an operator key)."""
    rec = await service.series_read(caller, series_id, token)
    return json_answer(series_out(rec, service.providers))


@router.post(
    "/v1/series/{series_id}/reschedule",
    response_model=SeriesOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 409),
)
async def reschedule_series(
    body: SeriesRescheduleRequest,
    caller: Booker,
    service: Service,
    token: BookingToken = None,
    series_id: str = SeriesId,
) -> Response:
    """Move one dose within its site; the doses after it stay if still in their window,
    else move too (to the slot nearest their old interval). Every dose stays booked: a
    move that cannot be made whole is undone (``reason`` says why)."""
    return json_answer(await service.series_reschedule(caller, series_id, token, body))


@router.delete("/v1/series/{series_id}", status_code=204, responses=errors(403, 404, 409))
async def delete_series(
    caller: Booker, service: Service, token: BookingToken = None, series_id: str = SeriesId
) -> Response:
    """Cancel every dose of a booked series."""
    await service.series_cancel(caller, series_id, token)
    return Response(status_code=204)
