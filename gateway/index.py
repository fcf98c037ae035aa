"""The gateway's availability index: search answers from memory, kept current from the
availability stream.

At start the index records the stream's last entry id, then loads every calendar's free
places from the shards, then follows the stream from the recorded id: a change made
during the load is applied again afterwards, which is harmless because a delta *sets*
a slot's free places. Every answer carries the index's freshness (the time of the last
entry applied and how long ago that was). Reads are a projection: a hold may still
answer 409 for a slot the index showed as free a moment ago.

The index covers ``days`` UTC days from yesterday on the stack's clock, and moves with
it: when a day passes, its window moves on and it reloads from the shards (whose
calendars roll on by themselves, see :mod:`engine.horizon`). Calendars of every slot
length are searched: one :class:`~engine.search.AvailabilityGrid` per length, on the
same window, and a search merges their answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from actors.api import Hexbook
from actors.availability import AvailabilityStreams, CalendarChanged, Change, stop_tasks
from actors.embedded_redis import redacted
from engine.geo import haversine_km
from engine.search import AvailabilityGrid, Match

__all__ = ["AvailabilityIndex"]

log = logging.getLogger("hexbook.gateway")
DAY = 86_400


class AvailabilityIndex:
    """:class:`~engine.search.AvailabilityGrid` s (one per slot length) fed by the shards
    and the stream, on a window that follows the clock."""

    def __init__(
        self,
        hexbook: Hexbook,
        stream_urls: list[str],
        start: int | None = None,
        days: int = 31,
        gather_seconds: float = 0.05,
        roll_check_seconds: float = 5.0,
    ) -> None:
        self.hexbook = hexbook
        self.clock = hexbook.clock
        self.gather_seconds = gather_seconds  # after a read, wait this long for more
        self.roll_check_seconds = roll_check_seconds
        # The stream of every Redis shards journal to (one, unless ADR 0025's split).
        self.streams = AvailabilityStreams(stream_urls)
        self.follower = self.streams.follow(["0-0"] * len(stream_urls))
        # A fixed start (tests) keeps the window where it is; None: yesterday, moving.
        self.fixed = start is not None
        self.start = start if start is not None else self._yesterday()
        self.days = days
        self.grids: dict[int, AvailabilityGrid] = {}
        self._grid_of: dict[tuple[str, str], AvailabilityGrid] = {}
        self.last_entry_ms = 0
        self.applied = 0
        self.moves = 0  # times the window moved on
        # Every provider seen, kept current: the gateway formats local times from these
        # without a shard call (a PUT through this gateway also refreshes it).
        self.providers: dict[str, Any] = {}
        # Calendars changed since a reader (the SMART publisher) last drained them.
        self.dirty: set[tuple[str, str]] = set()
        self.version = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Calendars to read whole again (added, replaced, rolled): read by a task of their
        # own, one shard call per shard, so slot changes keep flowing meanwhile.
        self._stale: set[tuple[str, str]] = set()
        self._stale_added = asyncio.Event()
        self.reload_seconds = 5.0  # one round of calendar reads at most, then again
        self.unread: set[str] = set()  # shards not read whole yet (away at the start)

    def _yesterday(self) -> int:
        now = self.clock.seconds()
        return now - now % DAY - DAY

    @property
    def end(self) -> int:
        return self.start + self.days * DAY

    def _grid(self, slot_seconds: int) -> AvailabilityGrid:
        grid = self.grids.get(slot_seconds)
        if grid is None:
            grid = AvailabilityGrid(self.start, slot_seconds, self.days * DAY // slot_seconds)
            self.grids[slot_seconds] = grid
        return grid

    async def load_and_follow(self) -> None:
        """Load from the shards, then follow the stream (and the clock) in the background."""
        self.follower = self.streams.follow(await self.streams.newest())
        await self._load()
        self.last_entry_ms = int(time.time() * 1000)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow()),
            loop.create_task(self._reload_stale()),
            loop.create_task(self._read_unread()),
        ]
        if not self.fixed:
            self._tasks.append(loop.create_task(self._follow_the_clock()))

    async def _load(self) -> None:
        """Read every shard's calendars whole. A shard that does not answer (its node
        lost, it restarts elsewhere) is read later, in the background: a gateway starts
        and serves the others' meanwhile (its own commands get 503 until it is back)."""
        for shard in self.hexbook.directory.shards:
            try:
                await self._load_shard(shard)
            except Exception as exc:  # a shard away: read again soon
                log.warning(
                    "index: shard %s not read (%s: %s); reading it in the background",
                    shard, type(exc).__name__, str(exc)[:200],
                )  # fmt: skip
                self.unread.add(shard)

    async def _load_shard(self, shard: str) -> None:
        ref = self.hexbook.shard(shard).availability.remote()
        for row in await asyncio.wait_for(ref, self.reload_seconds):
            self._upsert(*row)

    async def _read_unread(self, every: float = 1.0) -> None:
        """Read the shards :meth:`_load` could not, as they come back."""
        while True:
            await asyncio.sleep(every)
            for shard in sorted(self.unread):
                try:
                    await self._load_shard(shard)
                except Exception as exc:  # still away
                    log.debug("index: shard %s not read yet: %s", shard, exc)
                    continue
                self.unread.discard(shard)
                log.info("index: shard %s read", shard)

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        await self.follower.close()
        await self.streams.close()

    def _upsert(
        self, provider: Any, service: str, start: int, slot_seconds: int, remaining: bytes
    ) -> None:
        key = (provider.provider_id, service)
        self.providers[provider.provider_id] = provider
        self.dirty.add(key)
        self.version += 1
        if 86_400 % slot_seconds or (start - self.start) % slot_seconds:
            log.warning("calendar %s/%s is off any grid of its length; not indexed", *key)
            return
        grid = self._grid(slot_seconds)
        old = self._grid_of.get(key)
        if old is not None and old is not grid:
            old.remove(*key)  # its slot length changed
        self._grid_of[key] = grid
        grid.upsert(provider, service, start, np.frombuffer(remaining, dtype="<i4"))

    @property
    def last_id(self) -> str:
        """The cursor of the last entry applied (of every stream)."""
        return self.follower.cursor

    async def _follow(self) -> None:
        follower = self.follower
        pending: list[Any] = []  # entries read, not applied yet (a shard restarting)
        while True:
            if not pending:
                try:
                    pending = await follower.read(count=500, block_ms=1000)
                except Exception as exc:  # Redis away: keep serving what we have, retry
                    log.warning("availability stream unreachable: %s", exc)
                    await asyncio.sleep(1)
                    continue
                for url, why in follower.failing.items():
                    log.warning("availability stream of %s unreachable: %s", redacted(url), why)
            read, done = len(pending), 0
            try:
                for entry, _cursor in pending:
                    self._apply(entry.changes)
                    done += 1
                    self.last_entry_ms = max(self.last_entry_ms, int(entry.entry_id.split("-")[0]))
                    self.applied += 1
            except Exception as exc:  # a shard restarting: apply this entry again shortly
                log.warning("index: a change could not be applied yet: %s", exc)
                pending = pending[done:]
                await asyncio.sleep(0.5)
                continue
            pending = []
            if 0 < read < 500 and self.gather_seconds:
                # Under load every shard batch adds an entry; reading them one XREAD each
                # cost the gateway's loop 9% of a hold (py-spy). A short wait gathers them:
                # 50 ms, not 10, took the gateway's CPU per request down 6-9% at 32
                # connections (an XREAD costs redis-py ~0.1-0.2 ms of CPU whatever it
                # carries), while a search sees a change at most ~50 ms later.
                await asyncio.sleep(self.gather_seconds)

    async def _follow_the_clock(self) -> None:
        while True:
            await asyncio.sleep(self.roll_check_seconds)
            if self._yesterday() > self.start:
                try:
                    await self.move_to(self._yesterday())
                except Exception as exc:  # a shard away: the next check tries again
                    log.warning("index window not moved yet: %s", exc)

    async def move_to(self, start: int) -> None:
        """Move the window to start at ``start`` (a UTC midnight) and reload every
        calendar from its shard: the days that came into the window are filled."""
        self.start = start
        for grid in self.grids.values():
            grid.move_to(start)
        await self._load()
        self.moves += 1
        self.version += 1

    def _apply(self, changes: list[Change]) -> None:
        for change in changes:
            pid, service = change.provider_id, change.service
            if isinstance(change, CalendarChanged):  # added, replaced or moved: read it whole
                self._stale.add((pid, service))
                self._stale_added.set()
            else:
                grid = self._grid_of.get((pid, service))
                if grid is not None:
                    grid.set_free(pid, service, change.start, change.remaining)
                self.dirty.add((pid, service))
                self.version += 1

    async def _reload_stale(self) -> None:
        """Read the calendars that changed whole, from their shards, as they come: every
        calendar waiting, in one call per shard. A slow or stalled shard delays its own
        calendars only; the slot changes of the stream are applied meanwhile (a day's roll
        changes every calendar at once: read one by one under a launch's load, they held
        the index back for minutes)."""
        while True:
            await self._stale_added.wait()
            self._stale_added.clear()
            batch, self._stale = self._stale, set()
            try:
                await asyncio.wait_for(self._reload(batch), self.reload_seconds)
            except Exception as exc:  # a shard away or slow: those calendars again soon
                log.warning("index: %d calendars not read yet: %s", len(batch), exc)
                self._stale |= batch
                await asyncio.sleep(0.5)
                self._stale_added.set()

    async def _reload(self, calendars: set[tuple[str, str]]) -> None:
        def placement() -> dict[str, str]:  # from Redis: a provider may have moved
            return {p: self.hexbook.shard_of(p, refresh=True) for p in {p for p, _ in calendars}}

        shard_of = await asyncio.to_thread(placement)
        by_shard: dict[str, list[tuple[str, str]]] = {}
        for pid, service in calendars:
            by_shard.setdefault(shard_of[pid], []).append((pid, service))
        answers = await asyncio.gather(
            *(
                self.hexbook.shard(shard).availability.remote(calendars=wanted)
                for shard, wanted in by_shard.items()
            )
        )
        for rows in answers:
            for row in rows:
                self._upsert(*row)

    def freshness(self) -> dict[str, Any]:
        """When the last applied change happened, and how long ago."""
        now_ms = int(time.time() * 1000)
        return {
            "as_of_ms": self.last_entry_ms,
            "age_ms": max(now_ms - self.last_entry_ms, 0),
            "entries_applied": self.applied,
        }

    def calendars(self) -> set[tuple[str, str]]:
        """Every (provider, service) in the index."""
        return set(self._grid_of)

    def free_of(self, provider_id: str, service: str) -> tuple[int, int, np.ndarray] | None:
        """A calendar's free places over the window: (start, slot seconds, per slot)."""
        grid = self._grid_of.get((provider_id, service))
        if grid is None:
            return None
        return grid.start, grid.slot_seconds, grid.free_of(provider_id, service)

    def places_rows(self, service: str, t_from: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every calendar of ``service``: (lats, lngs, free places in slots from ``t_from``
        on), over every grid: what :func:`places_near` sums."""
        parts = [grid.places_by_row(service, t_from) for grid in self.grids.values()]
        if not parts:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )

    @staticmethod
    def places_near(
        rows: tuple[np.ndarray, np.ndarray, np.ndarray],
        points: list[tuple[float, float]],
        radius_km: float,
    ) -> list[int]:
        """Free places of ``rows`` (from :meth:`places_rows`) within ``radius_km`` of each
        point: one distance per calendar and point."""
        lats, lngs, free = rows
        if free.size == 0:
            return [0] * len(points)
        return [
            int(free[haversine_km(lat, lng, lats, lngs) <= radius_km].sum()) for lat, lng in points
        ]

    def search(
        self,
        lat: float,
        lng: float,
        radius_km: float,
        service: str,
        t_from: int | None = None,
        t_to: int | None = None,
        *,
        limit: int = 20,
        party_size: int = 1,
        languages: Iterable[str] = (),
        accessibility: Iterable[str] = (),
        insurance: Iterable[str] = (),
        order: Literal["distance", "earliest"] = "distance",
    ) -> list[Match]:
        """Each grid's answer, merged as one grid would rank them."""
        found: list[Match] = []
        for grid in self.grids.values():
            found += grid.search(
                lat, lng, radius_km, service, t_from, t_to, limit=limit, party_size=party_size,
                languages=languages, accessibility=accessibility, insurance=insurance, order=order,
            )  # fmt: skip
        if len(self.grids) > 1:
            if order == "distance":
                found.sort(key=lambda m: (m.distance_km, m.slots[0][0]))
            else:
                found.sort(key=lambda m: (m.slots[0][0], m.distance_km))
        return found[:limit]
