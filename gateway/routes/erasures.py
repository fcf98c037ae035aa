"""``/v1/erasures``: erase one patient's data on request (operators; audited)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from gateway.answers import json_answer
from gateway.deps import Operator, RuntimeDep, json_body
from gateway.openapi import errors
from gateway.schemas import ErasureIn, ErasureOut

router = APIRouter(prefix="/v1/erasures", tags=["operations"])


@router.post(
    "",
    response_model=ErasureOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 503),
)
async def post_erasure(body: ErasureIn, _: Operator, rt: RuntimeDep) -> Response:
    """Erase what a patient attested and their contact details from every booking of
    ``patient_ref`` (in the calendars and the archive). The bookings stay, without it.
    Repeating it is harmless (it erases nothing more). A 503 means a shard did not
    answer: repeat it."""
    assert rt.eraser is not None
    n = await rt.eraser.erase(body.patient_ref)
    return json_answer({"patient_ref": body.patient_ref, "bookings_erased": n})
