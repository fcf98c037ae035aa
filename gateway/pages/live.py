"""The launch dashboard's numbers: one snapshot a second for every open dashboard.

A :class:`Pulse` samples the gateway's own counters (holds, bookings, answers by status)
once a second and keeps a minute of samples, so "per minute" is the difference over the
last 60 s. The snapshot adds what is left (free places by site and by H3 cell, from the
index), the searches that found nothing by cell, shard and gateway health, the index's
freshness and the waiting rooms. However many dashboards are open, it is computed once a
second and the same text is sent to each (server-sent events), so a dashboard costs the
gateway a write per second, not a computation.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import h3

from gateway.deps import Runtime
from gateway.pages.places import cell_map

__all__ = ["Pulse", "pulse_of"]

MAP_RESOLUTION = 7
TOP_SITES = 12
MAPS = ("map_places", "map_unserved")
SHARD_CHECK_SECONDS = 5.0


class Pulse:
    """Samples and the latest snapshot (as the SSE ``data`` line) for one gateway."""

    def __init__(self, rt: Runtime, every: float = 1.0) -> None:
        self.rt = rt
        self.every = every
        self.samples: collections.deque[tuple[float, dict[str, float]]] = collections.deque(
            maxlen=int(61 / every) + 1
        )
        self.latest = ""
        self.version = 0
        self.maps = ""
        self.maps_version = 0
        self.changed = asyncio.Event()  # set (and replaced) at each new snapshot
        self.viewers = 0
        self.shards: list[dict[str, Any]] = []
        self._shards_at = 0.0
        self._cells: dict[tuple[float, float], str] = {}  # a site's position -> its cell
        self._task: asyncio.Task[None] | None = None

    def per_minute(self) -> dict[str, float]:
        """Each counter's change over the last minute (since the first sample, when the
        gateway has been watched for less than that)."""
        if not self.samples:
            return {}
        (_, first), (_, last) = self.samples[0], self.samples[-1]
        return {k: last[k] - first[k] for k in last}

    async def check_shards(self) -> None:
        hb = self.rt.hexbook
        names = await asyncio.to_thread(lambda: list(hb.directory.shards))
        out = []
        for name in names:
            began = time.perf_counter()
            try:
                info = await asyncio.wait_for(hb.shard(name).info.remote(), 2.0)
                out.append({"name": name, "up": True, "calendars": info["calendars"],
                            "batches": info["batches"],
                            "ms": round((time.perf_counter() - began) * 1000, 1)})  # fmt: skip
            except Exception as exc:  # any failure is "down", with why
                out.append({"name": name, "up": False, "why": type(exc).__name__})
        self.shards = out

    def snapshot(self) -> dict[str, Any]:
        rt = self.rt
        now = rt.hexbook.clock.seconds()
        sites = []
        by_cell: dict[str, float] = {}
        for pid, service in sorted(rt.index.calendars()):  # one pass: each site's places left
            grid = rt.index.free_of(pid, service)
            provider = rt.service.providers.get(pid)
            if grid is None or provider is None:
                continue
            start, step, free = grid
            left = int(free[max(0, (now - start) // step + 1) :].sum())
            sites.append((left, pid, service, provider.name))
            at = (provider.lat, provider.lng)  # a site that moves gets its new cell
            cell = self._cells.get(at)
            if cell is None:
                cell = self._cells[at] = h3.latlng_to_cell(*at, MAP_RESOLUTION)
            by_cell[cell] = by_cell.get(cell, 0) + left
        sites.sort(key=lambda s: (-s[0], s[1]))
        unserved: dict[str, float] = {}
        for (cell, _), n in rt.service.unserved.items():
            unserved[cell] = unserved.get(cell, 0) + n
        rooms = [
            {"room_id": r.room_id, "state": r.state, "rate": round(r.rate, 1),
             "waiting": r.counts.get("waiting", 0), "admitted": r.counts.get("admitted", 0),
             "holding": r.counts.get("holding", 0), "sold_out": len(r.sold_out_areas)}
            for r in rt.service.rooms.rooms.values()
        ]  # fmt: skip
        fresh = rt.index.freshness()
        return {
            "at": int(time.time()),
            "per_minute": self.per_minute(),
            "places_left": int(sum(by_cell.values())),
            "sites": [
                {"provider_id": p, "service": s, "name": n, "left": left}
                for left, p, s, n in sites[:TOP_SITES]
            ],
            "sites_sold_out": sum(1 for s in sites if s[0] == 0),
            "map_places": cell_map(
                by_cell,
                label="free places left by area",
                titles={c: f"{int(v)} places left" for c, v in by_cell.items()},
            ),
            "map_unserved": cell_map(
                unserved,
                label="searches that found nothing, by area",
                titles={c: f"{int(v)} searches found nothing" for c, v in unserved.items()},
            )
            or "<p>none yet</p>",
            "shards": self.shards,
            "gateway": {
                "inflight": rt.service.router.inflight,
                "feed_clients": rt.feed_clients,
                "dashboards": self.viewers,
                "redis_restarts": rt.redis_server.restarts if rt.redis_server else 0,
            },
            "index": {"age_ms": fresh["age_ms"], "entries_applied": fresh["entries_applied"]},
            "rooms": rooms,
        }

    async def tick(self) -> None:
        """One sample, and a new snapshot while someone is watching."""
        self.samples.append((time.monotonic(), self.rt.metrics.totals()))
        if not self.viewers:
            return
        if time.monotonic() - self._shards_at >= SHARD_CHECK_SECONDS:
            self._shards_at = time.monotonic()
            await self.check_shards()
        snap = self.snapshot()
        maps = json.dumps({k: snap.pop(k) for k in MAPS}, separators=(",", ":"))
        text = json.dumps(snap, separators=(",", ":"))
        self.latest = text
        if maps != self.maps:  # the maps (most of the bytes) go out when they change
            self.maps = maps
            self.maps_version += 1
        self.version += 1
        told, self.changed = self.changed, asyncio.Event()
        told.set()  # every waiting stream writes the new snapshot

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # a bad second must not stop the dashboard
                self.latest = json.dumps({"error": f"{type(exc).__name__}: {exc}"[:200]})
            await asyncio.sleep(self.every)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: each new snapshot as ``event: stats``, and the maps as
        ``event: maps`` when they changed since this client's last."""
        self.viewers += 1
        try:
            if not self.latest:
                await self.tick()
            yield "retry: 2000\n\n"
            seen, seen_maps = -1, -1
            while True:
                if seen != self.version:
                    seen = self.version
                    yield f"event: stats\ndata: {self.latest}\n\n"
                    if seen_maps != self.maps_version:
                        seen_maps = self.maps_version
                        yield f"event: maps\ndata: {self.maps}\n\n"
                if not await self._wait(seen):
                    yield ": keep-alive\n\n"
        finally:
            self.viewers -= 1

    async def _wait(self, seen: int, timeout: float = 15.0) -> bool:
        """Until a snapshot newer than ``seen`` (``False``: none within ``timeout``)."""
        changed = self.changed
        if self.version != seen:
            return True
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True


def pulse_of(rt: Runtime) -> Pulse:
    """This gateway's pulse, started on first use."""
    pulse = rt.pulse
    if not isinstance(pulse, Pulse):
        pulse = Pulse(rt)
        rt.pulse = pulse
        pulse.start()
    return pulse
