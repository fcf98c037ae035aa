"""``/v1/audit``: the audit trail, for operators (read only: nothing changes an entry)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Response

from gateway.answers import json_answer
from gateway.audit_trail import entries_csv
from gateway.deps import Operator, RuntimeDep
from gateway.openapi import errors
from gateway.schemas import AuditEntryOut, AuditQuery

router = APIRouter(prefix="/v1/audit", tags=["operations"])


@router.get(
    "",
    response_model=list[AuditEntryOut],
    responses={
        200: {"content": {"text/csv": {}}, "description": "the entries (CSV with format=csv)"},
        **errors(403),
    },
)
async def get_audit(q: Annotated[AuditQuery, Query()], _: Operator, rt: RuntimeDep) -> Response:
    """Who did which admin action, to what, when, and the outcome: the oldest first,
    ``limit`` at a time after ``after`` (the last id read)."""
    assert rt.audit is not None
    entries = await rt.audit.read(q.after or "-", q.limit)
    if q.format == "csv":
        return Response(entries_csv(entries), media_type="text/csv; charset=utf-8")
    return json_answer([asdict(e) for e in entries])
