"""Imports on a schedule: an operator registers a source and an interval, and the gateway
runs the connector that often, keeping the last summary (or error) on the schedule.

- Schedules live in Redis (hash ``hexbook:import:schedules``, id -> JSON), so they
  survive a restart and every gateway sees the same ones.
- Every gateway ticks, but a run is claimed with a Redis lock per schedule
  (``SET NX PX``, released only by its holder) and the schedule's ``next_run_at`` is
  read again under the lock: with several gateways, each due run happens once.
- A gateway runs its due imports one after another, in a thread, off the event loop.
- The next run is due ``every_seconds`` after the start of the last one (no drift); a run
  that took longer than that is followed by the next at once, never by a backlog.
- A SMART source is still fetched only when its ``max-age`` has run out, and with
  ``If-None-Match``: a short interval polls politely.
- A run that fails (source unreachable, not a Bundle, ...) keeps its error on the
  schedule and counts in ``failures``; the next run is tried at the usual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis

from actors.api import Hexbook
from engine.errors import HexbookError, NotFound
from engine.provider import Provider
from gateway.interop.runner import check_spec, run_import
from gateway.schemas import ImportIn, ImportScheduleIn, ImportScheduleOut

__all__ = ["ImportScheduler", "ScheduleStore"]

HASH = "hexbook:import:schedules"
LOCK = "hexbook:import:lock:"
log = logging.getLogger("hexbook.imports")

# Write a run's outcome back only if the schedule was not deleted meanwhile.
_SAVE_IF_PRESENT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""
# Release a lock only if it is still ours (it may have run out and been taken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ScheduleStore:
    """The schedules in Redis. Synchronous (redis-py); the gateway calls it off its loop."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._save = client.register_script(_SAVE_IF_PRESENT)
        self._release = client.register_script(_RELEASE)

    def create(self, spec: ImportScheduleIn, now: float | None = None) -> ImportScheduleOut:
        check_spec(self.import_spec(spec))
        now = time.time() if now is None else now
        record = ImportScheduleOut(
            schedule_id=secrets.token_hex(6),
            created_at=now,
            next_run_at=now,
            **spec.model_dump(),
        )
        self.redis.hset(HASH, record.schedule_id, record.model_dump_json())
        return record

    def get(self, schedule_id: str) -> ImportScheduleOut:
        raw = self.redis.hget(HASH, schedule_id)
        if raw is None:
            raise NotFound(f"no import schedule {schedule_id!r}")
        return ImportScheduleOut.model_validate_json(raw)

    def list(self) -> list[ImportScheduleOut]:
        records = (ImportScheduleOut.model_validate_json(v) for v in self.redis.hvals(HASH))
        return sorted(records, key=lambda r: r.created_at)

    def delete(self, schedule_id: str) -> None:
        if not self.redis.hdel(HASH, schedule_id):
            raise NotFound(f"no import schedule {schedule_id!r}")

    def save(self, record: ImportScheduleOut) -> bool:
        """Store a run's outcome; ``False`` if the schedule was deleted meanwhile."""
        return bool(self._save(keys=[HASH], args=[record.schedule_id, record.model_dump_json()]))

    def claim(self, schedule_id: str, seconds: float) -> str | None:
        """The lock of one run (its token), or ``None`` if another gateway holds it."""
        token = secrets.token_hex(8)
        ok = self.redis.set(LOCK + schedule_id, token, nx=True, px=max(int(seconds * 1000), 1))
        return token if ok else None

    def release(self, schedule_id: str, token: str) -> None:
        self._release(keys=[LOCK + schedule_id], args=[token])

    @staticmethod
    def import_spec(spec: ImportScheduleIn | ImportScheduleOut) -> ImportIn:
        return ImportIn.model_validate(
            {
                "connector": spec.connector,
                "url": spec.url,
                "states": spec.states,
                "timezone": spec.timezone,
            }
        )


class ImportScheduler:
    """Runs the schedules that are due, every ``tick`` seconds, until stopped."""

    def __init__(
        self,
        hb: Hexbook,
        placed: Callable[[dict[str, Provider]], None],
        tick: float = 5.0,
        lock_seconds: float = 900.0,
    ) -> None:
        self.hb = hb
        self.store = ScheduleStore(hb.redis)
        self.placed = placed
        self.tick = tick
        self.lock_seconds = lock_seconds  # a run longer than this may be run twice
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="hexbook-import-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.run_due)
            except Exception:  # Redis away for a moment: log it, try at the next tick
                log.exception("import scheduler tick failed")
            await asyncio.sleep(self.tick)

    def run_due(self, now: float | None = None) -> list[str]:
        """Run every schedule that is due and not claimed elsewhere; the ids run."""
        now = time.time() if now is None else now
        ran = []
        for record in self.store.list():
            if record.next_run_at <= now and self.run_one(record.schedule_id):
                ran.append(record.schedule_id)
        return ran

    def run_one(self, schedule_id: str) -> bool:
        token = self.store.claim(schedule_id, self.lock_seconds)
        if token is None:
            return False
        try:
            try:
                record = self.store.get(schedule_id)
            except NotFound:
                return False  # deleted since the list was read
            started = time.time()
            if record.next_run_at > started:
                return False  # another gateway ran it since the list was read
            try:
                result = run_import(self.hb, self.store.import_spec(record), self.placed)
            except Exception as exc:  # the source's fault or a passing outage: kept, retried
                error = str(exc) if isinstance(exc, HexbookError) else repr(exc)
                record.failures += 1
                record.last_error = error[:1000]
                log.warning("import schedule %s failed: %s", schedule_id, error[:200])
            else:
                record.last_result, record.last_error = result, None
                log.info(
                    "import schedule %s: created %d, updated %d, unchanged %d, conflicts %d",
                    schedule_id,
                    result.created,
                    result.updated,
                    result.unchanged,
                    len(result.conflicts),
                )
            record.runs += 1
            record.last_run_at = started
            record.next_run_at = max(started + record.every_seconds, time.time())
            self.store.save(record)
            return True
        finally:
            self.store.release(schedule_id, token)
