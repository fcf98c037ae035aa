"""The v1 API's routes, one module per resource, each an ``APIRouter`` whose handlers call
:class:`gateway.service.BookingService` (or the operations' own stores)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.routes import (
    audit,
    bookings,
    erasures,
    feed,
    holds,
    imports,
    keys,
    ops,
    providers,
    rooms,
    rules,
    search,
    series,
    shards,
    smart,
    waitlist,
)

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    ops.router,
    search.router,
    providers.router,
    holds.router,
    bookings.router,
    series.router,
    waitlist.router,
    rooms.router,
    rules.router,
    feed.router,
    keys.router,
    imports.router,
    audit.router,
    erasures.router,
    smart.router,
    shards.router,
)
