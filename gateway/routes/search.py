"""``GET /v1/search``: where there are free places near a point, from the index."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from gateway.answers import json_answer
from gateway.deps import Caller, Service
from gateway.openapi import ANONYMOUS
from gateway.schemas import SearchOut, SearchQuery

router = APIRouter(prefix="/v1", tags=["search"])


@router.get("/search", response_model=SearchOut, openapi_extra=ANONYMOUS)
async def search(q: Annotated[SearchQuery, Query()], _: Caller, service: Service) -> Response:
    """Providers with free places near a point, nearest (or earliest) first, each with
    its next free slots, from the gateway's index; ``index`` says how fresh it is."""
    if q.series:
        return json_answer(await service.search_series(q))
    return json_answer(service.search(q))
