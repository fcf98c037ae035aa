"""The gateway's availability index: search answers from memory, kept current from the
availability stream.

At start the index records the stream's last entry id, then loads every calendar's free
places from the shards, then follows the stream from the recorded id: a change made
during the load is applied again afterwards, which is harmless because a delta *sets*
a slot's free places. Every answer carries the index's freshness (the time of the last
entry applied and how long ago that was). Reads are a projection: a hold may still
answer 409 for a slot the index showed as free a moment ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np

from actors.api import Hexbook
from actors.availability import AvailabilityReader, CalendarChanged, Change
from engine.search import AvailabilityGrid, Match

__all__ = ["AvailabilityIndex"]

log = logging.getLogger("hexbook.gateway")


class AvailabilityIndex:
    """An :class:`~engine.search.AvailabilityGrid` fed by the shards and the stream."""

    def __init__(
        self,
        hexbook: Hexbook,
        redis_url: str,
        start: int,
        days: int = 16,
        slot_seconds: int = 900,
        gather_seconds: float = 0.01,
    ) -> None:
        self.hexbook = hexbook
        self.gather_seconds = gather_seconds  # after a read, wait this long for more
        self.stream = AvailabilityReader(redis_url)
        self.grid = AvailabilityGrid(start, slot_seconds, days * 86_400 // slot_seconds)
        self.last_id = "0-0"
        self.last_entry_ms = 0
        self.applied = 0
        self.skipped_calendars = 0
        # Every provider seen, kept current: the gateway formats local times from these
        # without a shard call (a PUT through this gateway also refreshes it).
        self.providers: dict[str, Any] = {}
        # Calendars changed since a reader (the SMART publisher) last drained them.
        self.dirty: set[tuple[str, str]] = set()
        self.version = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load from the shards, then follow the stream in the background."""
        self.last_id = await self.stream.newest() or "0-0"
        for shard in self.hexbook.directory.shards:
            for row in await self.hexbook.shard(shard).availability.remote():
                self._upsert(*row)
        self.last_entry_ms = int(time.time() * 1000)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.stream.close()

    def _upsert(
        self, provider: Any, service: str, start: int, slot_seconds: int, remaining: bytes
    ) -> None:
        self.providers[provider.provider_id] = provider
        self.dirty.add((provider.provider_id, service))
        self.version += 1
        if slot_seconds != self.grid.slot_seconds or (start - self.grid.start) % slot_seconds:
            self.skipped_calendars += 1  # other slot lengths are not indexed yet
            return
        self.grid.upsert(provider, service, start, np.frombuffer(remaining, dtype="<i4"))

    async def _follow(self) -> None:
        while True:
            try:
                entries = await self.stream.read(self.last_id, count=500, block_ms=1000)
            except Exception as exc:  # Redis away: keep serving what we have, retry
                log.warning("availability stream unreachable: %s", exc)
                await asyncio.sleep(1)
                continue
            for entry in entries:
                await self._apply(entry.changes)
                self.last_id = entry.entry_id
                self.last_entry_ms = int(self.last_id.split("-")[0])
                self.applied += 1
            if 0 < len(entries) < 500 and self.gather_seconds:
                # Under load every shard call adds an entry; reading them one XREAD each
                # cost the gateway's loop 9% of a hold (py-spy). A short wait gathers them.
                await asyncio.sleep(self.gather_seconds)

    async def _apply(self, changes: list[Change]) -> None:
        for change in changes:
            pid, service = change.provider_id, change.service
            if isinstance(change, CalendarChanged):  # added, replaced or moved: read it whole
                shard = await asyncio.to_thread(self.hexbook.shard_of, pid, refresh=True)
                for row in await self.hexbook.shard(shard).availability.remote(pid, service):
                    self._upsert(*row)
            else:
                self.grid.set_free(pid, service, change.start, change.remaining)
                self.dirty.add((pid, service))
                self.version += 1

    def freshness(self) -> dict[str, Any]:
        """When the last applied change happened, and how long ago."""
        now_ms = int(time.time() * 1000)
        return {
            "as_of_ms": self.last_entry_ms,
            "age_ms": max(now_ms - self.last_entry_ms, 0),
            "entries_applied": self.applied,
        }

    def search(self, *args: Any, **kwargs: Any) -> list[Match]:
        return self.grid.search(*args, **kwargs)
