"""Patient data kept only as long as it is needed: erasure on request, purge by retention.

Patient data (what a patient attested, their contact details) leaves a booking two
ways; the booking itself stays (its slot, party size, status, opaque reference):

- **on request**: an operator's ``POST /v1/erasures`` erases one patient reference's
  data in every calendar and the archive (the audit trail records it, as every
  operator action);
- **by retention**: ``retention_days`` after an appointment ends, its data is purged. A
  gateway checks every ``retention_sweep_seconds`` (one at a time across gateways: a
  Redis lock) and appends a ``patient.purge`` entry to the audit trail when it purged
  anything.

Each shard erases in its calendars (an engine event, journaled), rewrites the archived
bookings, and snapshots at once, so the journal entries that held the data are trimmed
(:meth:`actors.shard.ShardActor.erase`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from actors.series import SeriesBook
from engine.errors import Unavailable
from gateway.audit_trail import AuditTrail
from gateway.router import ShardRouter
from gateway.waitlist import Waitlists

__all__ = ["Eraser"]

log = logging.getLogger("hexbook.retention")
LOCK = "hexbook:retention:lock"


class Eraser:
    """Erasures and the retention purge, over every shard of the deployment."""

    def __init__(
        self,
        router: ShardRouter,
        shards: Callable[[], list[str]],
        clock: Callable[[], int],
        redis: aioredis.Redis,
        trail: AuditTrail,
        retention_days: float,
        series: SeriesBook | None = None,
        waitlists: Waitlists | None = None,
    ) -> None:
        self.router, self.shards, self.clock = router, shards, clock
        self.series = series  # dose series keep the contact details given at their confirm
        self.waitlists = waitlists  # waitlist entries too, for their owner to read
        self.redis, self.trail = redis, trail
        self.retention_seconds = int(retention_days * 86400)
        self.purged = 0  # bookings this gateway purged by retention (metrics, tests)

    async def _everywhere(self, patient_ref: str | None, ended_by: int | None) -> int:
        now = self.clock()
        counts = await asyncio.gather(
            *(self.router.call_shard(s, "erase", now, patient_ref, ended_by) for s in self.shards())
        )
        return sum(counts)

    async def erase(self, patient_ref: str) -> int:
        """Erase ``patient_ref``'s data everywhere; how many bookings held some."""
        n = await self._everywhere(patient_ref, None)
        if self.series is not None:
            await self.series.erase_contacts(patient_ref, None)
        if self.waitlists is not None:
            await self.waitlists.erase(patient_ref)
        return n

    async def purge(self) -> int:
        """Purge the data of every appointment that ended ``retention_days`` ago."""
        cutoff = self.clock() - self.retention_seconds
        n = await self._everywhere(None, cutoff)
        if self.series is not None:
            try:
                await self.series.erase_contacts(None, cutoff)
            except Unavailable as exc:  # a series being booked: the next round has it
                log.info("retention: %s", exc)
        if n:
            self.purged += n
            await self.trail.record(
                "system:retention", "system", "patient.purge", f"bookings={n} ended_by={cutoff}",
                200,
            )  # fmt: skip
        return n

    async def run(self, every: float) -> None:
        """Purge every ``every`` seconds, while holding the deployment's lock."""
        me = secrets.token_hex(8)
        while True:
            try:
                got: Any = await self.redis.set(LOCK, me, nx=True, px=int(every * 900))
                if got:
                    n = await self.purge()
                    if n:
                        log.info("retention: purged the patient data of %d bookings", n)
            except Exception as exc:  # Redis or a shard away: the next round tries again
                log.warning("retention: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(every)
