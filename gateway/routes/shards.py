"""``/v1/shards``, ``/v1/cells``, ``/v1/moves``: where providers are served, and moving
them (operators). A move is online and resumable (:mod:`actors.moves`): while a
provider moves, its commands answer 503 with Retry-After; a move a crash cut short is
finished by ``POST /v1/moves/resume``, and by every gateway as it starts."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Response

from actors import moves
from actors.api import Hexbook
from gateway.answers import json_answer
from gateway.deps import Operator, RuntimeDep, json_body
from gateway.openapi import errors
from gateway.schemas import (
    ID_PATTERN,
    CellMoveOut,
    CellShardIn,
    MovesResumed,
    PromotionOut,
    ShardsOut,
)

router = APIRouter(tags=["operations"])
Cell = Path(pattern="^[0-9a-f]{15}$", description="an H3 cell (15 hex digits)")
ProviderId = Path(pattern=ID_PATTERN, description="1 to 128 of A-Z a-z 0-9 . _ : -")


def shards_out(hb: Hexbook) -> dict[str, Any]:
    """The shards with what the directory places on them, and the moves under way."""
    d = hb.directory
    placed, cells = d.providers(), d.cells()
    dedicated = {shard: pid for pid, shard in d.dedicated().items()}
    out = []
    for name in d.shards:
        out.append(
            {
                "name": name,
                "providers": sum(s == name for s in placed.values()),
                "cells": sum(s == name for s in cells.values()),
                "dedicated_to": dedicated.get(name),
            }
        )
    under_way = [
        {
            "kind": key.split(":", 1)[0],
            "id": key.split(":", 1)[1],
            "from_shard": intent.get("from"),
            "to_shard": intent["to"],
        }
        for key, intent in sorted(moves.pending(hb).items())
    ]
    return {"resolution": d.resolution, "shards": out, "moves": under_way}


@router.get("/v1/shards", response_model=ShardsOut, responses=errors(403))
async def get_shards(_: Operator, rt: RuntimeDep) -> Response:
    """Every shard: how many providers and cells the directory places on it, the hot
    site a dedicated one serves; and the moves under way."""
    return json_answer(await asyncio.to_thread(shards_out, rt.hexbook))


@router.put(
    "/v1/cells/{cell}/shard",
    response_model=CellMoveOut,
    dependencies=[Depends(json_body)],
    responses=errors(403, 409, 422, 503),
)
async def put_cell_shard(
    body: CellShardIn, _: Operator, rt: RuntimeDep, cell: str = Cell
) -> Response:
    """Map an H3 cell (at the directory's resolution) to a shard and move the providers
    already in it there, online. Asked again, it finishes what a crash cut short."""
    moved = await asyncio.to_thread(moves.move_cell, rt.hexbook, cell, body.shard)
    return json_answer({"cell": cell, "shard": body.shard, "moved": moved})


@router.post(
    "/v1/providers/{provider_id}/dedicated-shard",
    response_model=PromotionOut,
    responses=errors(403, 404, 409, 503),
)
async def promote_provider(_: Operator, rt: RuntimeDep, provider_id: str = ProviderId) -> Response:
    """Give a hot site (a stadium) a shard of its own and move it there, online; the
    shard keeps serving it across restarts. Asked again, the same shard."""
    shard = await asyncio.to_thread(moves.promote, rt.hexbook, provider_id)
    return json_answer({"provider_id": provider_id, "shard": shard})


@router.post("/v1/moves/resume", response_model=MovesResumed, responses=errors(403, 409, 503))
async def resume_moves(_: Operator, rt: RuntimeDep) -> Response:
    """Finish every move a crash cut short (gateways do this as they start, too)."""
    return json_answer({"finished": await asyncio.to_thread(moves.resume, rt.hexbook)})
