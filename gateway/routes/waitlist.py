"""``/v1/waitlist``: wait for a place, see where you stand, leave, accept an offer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Response

from gateway.answers import json_answer
from gateway.deps import Booker, IdempotencyKey, RuntimeDep, json_body
from gateway.openapi import errors
from gateway.schemas import BookingOut, WaitlistBookingIn, WaitlistIn, WaitlistOut

router = APIRouter(prefix="/v1/waitlist", tags=["waitlist"])
EntryId = Path(pattern=r"^wl_[A-Za-z0-9_-]{22}$", description="as the waitlist answer gave")
WaitlistToken = Annotated[
    str | None,
    Header(
        alias="X-Waitlist-Token",
        max_length=200,
        description="the waitlist_token of the answer that created the entry",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=WaitlistOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 409, 503),
)
async def join(body: WaitlistIn, caller: Booker, rt: RuntimeDep, key: IdempotencyKey) -> Response:
    """Wait for a place. When one frees up in the area and window (a hold lapses, a
    booking is cancelled, capacity is added), it is offered to the patients waiting, first
    come first served, as a hold of their own: read the entry to see it, accept it with
    ``POST /v1/waitlist/{entry_id}/booking`` before it expires, or it passes to the next.
    The answer carries the waitlist token (again in a repeat under the same
    Idempotency-Key). A place free already is offered at once. One entry per patient
    and service: a second is a 409 ``already_waiting``."""
    assert rt.waitlists is not None
    return json_answer(await rt.waitlists.join(caller, body, key), 201)


@router.get("/{entry_id}", response_model=WaitlistOut, responses=errors(403, 404))
async def read(
    caller: Booker, rt: RuntimeDep, token: WaitlistToken = None, entry_id: str = EntryId
) -> Response:
    """Where the entry stands, and its offer (its token in X-Waitlist-Token)."""
    assert rt.waitlists is not None
    return json_answer(await rt.waitlists.read(caller, entry_id, token))


@router.delete("/{entry_id}", status_code=204, responses=errors(403, 404, 503))
async def leave(
    caller: Booker, rt: RuntimeDep, token: WaitlistToken = None, entry_id: str = EntryId
) -> Response:
    """Leave the waitlist; an offer held is given back (to the next in line)."""
    assert rt.waitlists is not None
    await rt.waitlists.leave(caller, entry_id, token)
    return Response(status_code=204)


@router.post(
    "/{entry_id}/booking",
    status_code=201,
    response_model=BookingOut,
    responses=errors(403, 404, 409, 410, 503),
)
async def accept(
    caller: Booker,
    rt: RuntimeDep,
    key: IdempotencyKey,
    body: WaitlistBookingIn | None = None,
    token: WaitlistToken = None,
    entry_id: str = EntryId,
) -> Response:
    """Accept the offer: it becomes a booking for the entry's patient (409 ``no_offer``
    while there is none; 410 when it lapsed). The answer carries the booking token."""
    assert rt.waitlists is not None
    return json_answer(await rt.waitlists.accept(caller, entry_id, token, key), 201)
