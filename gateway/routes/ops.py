"""Operations: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.answers import json_answer
from gateway.deps import RuntimeDep
from gateway.openapi import ANONYMOUS
from gateway.problems import problem
from gateway.schemas import Health, Ready

router = APIRouter(tags=["operations"])
_METRICS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}
}


@router.get("/healthz", response_model=Health, openapi_extra=ANONYMOUS)
async def healthz() -> Response:
    """The process is alive."""
    return json_answer({"status": "ok"})


@router.get("/readyz", response_model=Ready, openapi_extra=ANONYMOUS)
async def readyz(rt: RuntimeDep) -> Response:
    """Shards reachable and Redis answering (503 with the reason otherwise)."""
    hb = rt.hexbook
    try:
        await asyncio.wait_for(asyncio.to_thread(hb.redis.ping), 2)
        shards = await asyncio.to_thread(lambda: hb.directory.shards)
        await asyncio.wait_for(asyncio.gather(*(hb.shard(s).info.remote() for s in shards)), 5)
    except Exception as exc:  # any failure means not ready, with the reason
        return problem(503, "unavailable", f"not ready: {type(exc).__name__}: {exc}"[:300])
    restarts = rt.redis_server.restarts if rt.redis_server is not None else 0
    return json_answer({"status": "ready", "shards": len(shards), "redis_restarts": restarts})


@router.get("/metrics", responses=_METRICS, openapi_extra=ANONYMOUS)
async def metrics(rt: RuntimeDep) -> Response:
    """Prometheus text format: requests by route and status, latency, holds, bookings,
    409s, batch sizes, index freshness, the embedded Redis."""
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
