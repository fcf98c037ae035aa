"""How many of each part a launch needs at a known peak, from measured capacities.

``hexbook-sim run`` plans from a simulated launch (its peaks per 10 s, its hottest
cell). When the peak is known instead (Chicago's 2021 launch: up to 300,000 page hits and
over 750 bookings a minute), :func:`plan_for_peak` gives the counts directly: gateway
processes for the requests, shards for the holds and bookings, Redis servers for their
journal events, nodes for all of them, each run at ``utilization`` of what ``make
bench`` measured one process to take (``build/bench.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulators.scenario import Capacity

__all__ = ["PeakPlan", "plan_for_peak"]


@dataclass(frozen=True)
class PeakPlan:
    requests_per_second: float
    shard_ops_per_second: float  # holds + confirms
    gateways: int
    shards: int
    redis_servers: int
    nodes: int


def plan_for_peak(
    requests_per_minute: float,
    bookings_per_minute: float,
    capacity: Capacity,
    holds_per_booking: float = 1.2,
) -> PeakPlan:
    """The counts for a peak of ``requests_per_minute`` at the gateways (searches,
    pages, holds, bookings) and ``bookings_per_minute`` confirmed; ``holds_per_booking``
    holds are placed per booking (some lapse or are released). Shards assume the load
    spreads over them; a hot site needs a shard of its own besides (``run`` finds it)."""
    if requests_per_minute < 0 or bookings_per_minute < 0 or holds_per_booking < 1:
        raise ValueError("rates must be at least 0 and holds per booking at least 1")
    k, u = capacity, capacity.utilization
    rps = requests_per_minute / 60
    ops = bookings_per_minute / 60 * (1 + holds_per_booking)
    gateways = max(1, math.ceil(rps / (k.gateway_requests_per_second * u)))
    redis = max(1, math.ceil(ops / (k.redis_events_per_second * u)))
    # A shard journals to one server: as many shards as servers at least (ADR 0025).
    shards = max(redis, math.ceil(ops / (k.shard_ops_per_second * u)))
    nodes = math.ceil((gateways + shards + redis) / k.cores_per_node)
    return PeakPlan(rps, ops, gateways, shards, redis, nodes)
