"""``/v1/bookings``: confirm a hold; read, cancel or move a booking with its token."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response

from gateway.answers import json_answer
from gateway.deps import Admin, Booker, BookingToken, IdempotencyKey, Service, json_body
from gateway.openapi import errors
from gateway.schemas import (
    ROUTABLE_PATTERN,
    AttendanceIn,
    BookingOut,
    BookingRequest,
    RescheduleRequest,
)

router = APIRouter(prefix="/v1/bookings", tags=["bookings"])
BookingId = Path(pattern=ROUTABLE_PATTERN, max_length=512, description="as the booking answer gave")


@router.post(
    "",
    status_code=201,
    response_model=BookingOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 410),
)
async def post_booking(
    body: BookingRequest, caller: Booker, service: Service, key: IdempotencyKey
) -> Response:
    """Confirm a hold. The answer carries the booking token (again in a repeat under the
    same Idempotency-Key)."""
    return json_answer(await service.book(caller, body, key), 201)


@router.get("/{booking_id}", response_model=BookingOut, responses=errors(403, 404))
async def get_booking(
    caller: Booker, service: Service, token: BookingToken = None, booking_id: str = BookingId
) -> Response:
    """Read a booking (its token in X-Booking-Token, or an operator key)."""
    return json_answer(await service.booking(caller, booking_id, token))


@router.delete("/{booking_id}", status_code=204, responses=errors(403, 404, 409))
async def delete_booking(
    caller: Booker,
    service: Service,
    key: IdempotencyKey,
    token: BookingToken = None,
    booking_id: str = BookingId,
) -> Response:
    """Cancel a booking (its token, or an operator key)."""
    await service.cancel(caller, booking_id, token, key)
    return Response(status_code=204)


@router.post(
    "/{booking_id}/reschedule",
    response_model=BookingOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 409),
)
async def reschedule(
    body: RescheduleRequest,
    caller: Booker,
    service: Service,
    key: IdempotencyKey,
    token: BookingToken = None,
    booking_id: str = BookingId,
) -> Response:
    """Move a booking; the old place is freed only when the new one is booked. To
    another provider or service the booking gets a new id and keeps its token."""
    return json_answer(await service.reschedule(caller, booking_id, token, body, key))


@router.post(
    "/{booking_id}/attendance",
    response_model=BookingOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 404, 409),
)
async def attendance(
    body: AttendanceIn,
    caller: Admin,
    service: Service,
    key: IdempotencyKey,
    booking_id: str = BookingId,
) -> Response:
    """Mark whether the patient came (``attended`` or ``no_show``), once the slot has
    started: the site's provider-admin, or an operator."""
    return json_answer(await service.mark_attendance(caller, booking_id, body, key))
