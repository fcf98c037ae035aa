"""``/v1/imports``: availability from other systems, once or on a schedule (operators)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Path, Response

from gateway.deps import Operator, RuntimeDep, json_body
from gateway.interop.runner import run_import
from gateway.openapi import errors
from gateway.schemas import ImportIn, ImportOut, ImportScheduleIn, ImportScheduleOut

router = APIRouter(prefix="/v1/imports", tags=["operations"])
ScheduleId = Path(pattern="^[0-9a-f]{12}$", description="as the schedule answer gave")


@router.post("", response_model=ImportOut, dependencies=[Depends(json_body)], responses=errors(403))
async def import_once(body: ImportIn, _: Operator, rt: RuntimeDep) -> ImportOut:
    """Run a connector once: fetch the source, create or update its providers and
    calendars, and report what happened. Confirmed bookings are never dropped: capacity
    lowered below them is a conflict in the answer."""
    return await asyncio.to_thread(run_import, rt.hexbook, body, rt.service.providers.update)


@router.post(
    "/schedules",
    status_code=201,
    response_model=ImportScheduleOut,
    dependencies=[Depends(json_body)],
    responses=errors(403),
)
async def create_import_schedule(
    body: ImportScheduleIn, _: Operator, rt: RuntimeDep
) -> ImportScheduleOut:
    """Run a connector on a schedule: at once, then every ``every_seconds``. Each run's
    summary, or its error, is kept on the schedule. Several gateways share the schedules
    and run each due import once."""
    return await asyncio.to_thread(rt.imports.store.create, body)


@router.get("/schedules", response_model=list[ImportScheduleOut], responses=errors(403))
async def list_import_schedules(_: Operator, rt: RuntimeDep) -> list[ImportScheduleOut]:
    """Every import schedule with its last run."""
    return await asyncio.to_thread(rt.imports.store.list)


@router.get(
    "/schedules/{schedule_id}", response_model=ImportScheduleOut, responses=errors(403, 404)
)
async def get_import_schedule(
    _: Operator, rt: RuntimeDep, schedule_id: str = ScheduleId
) -> ImportScheduleOut:
    """One import schedule with its last run."""
    return await asyncio.to_thread(rt.imports.store.get, schedule_id)


@router.delete("/schedules/{schedule_id}", status_code=204, responses=errors(403, 404))
async def delete_import_schedule(
    _: Operator, rt: RuntimeDep, schedule_id: str = ScheduleId
) -> Response:
    """Stop an import schedule (a run under way finishes; its outcome is dropped)."""
    await asyncio.to_thread(rt.imports.store.delete, schedule_id)
    return Response(status_code=204)
