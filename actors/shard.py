"""The shard actor: hosts a :class:`~actors.shard_core.ShardCore` in a Ray actor.

One writer task owns the state. Calls (``submit``, ``provision``, ...) queue their work
and wait; the writer takes everything queued, applies it in one uninterrupted step,
commits it to Redis in one MULTI/EXEC (group commit: the more callers wait, the bigger
the batch), and only then answers them. While one batch's commit is on its way, the
next is applied (its commit is sent once the first is durable, so the journal keeps the
order of application; ADR 0027). So nothing is acknowledged before it is durable, and
no answer rests on an earlier batch that did not become durable: if a commit fails the
shard forgets its memory and rebuilds from Redis before it serves again (fail stop),
and every caller of the failed batch, and of the batch applied behind it, gets
:class:`~engine.errors.Unavailable` to retry with the same idempotency key.

Every ``roll_seconds`` (30) the writer rolls the calendars whose local day changed
(:meth:`ShardCore.roll`): the rolling horizon, the archive, retention. The time is the
actor's :class:`~actors.clock.Clock`, which a test or the soak can move.

Redis calls time out after ``redis_timeout`` seconds (default 2), so with Redis down a
mutation fails within about that bound instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors import archive, journal
from actors.channel import Address, ChannelServer
from actors.clock import CLOCK_KEY, Clock, clock_from_redis
from actors.journal import HandedOff, ShardSnapshot
from actors.sealing import Keyring
from actors.shard_core import RecoveryStats, ShardCore, Staged
from engine.codec import Outcome, decode_commands
from engine.eligibility import Rule, refusals
from engine.errors import (
    BookingNotFound,
    HexbookError,
    HoldNotFound,
    KeyringError,
    ProviderNotFound,
    Unavailable,
)
from engine.provider import Provider
from engine.records import CalendarSnapshot
from engine.waitlist import WaitEntry

__all__ = ["ShardActor", "check"]

log = logging.getLogger("hexbook.shard")


class ShardActor:
    """Many calendars, one writer. Created as a named Ray actor by :mod:`actors.api`."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        *,
        snapshot_every_events: int = 200_000,
        snapshot_every_seconds: float = 300.0,
        sweep_seconds: float = 1.0,
        roll_seconds: float = 30.0,
        redis_timeout: float = 2.0,
        clock: Clock | None = None,
        keyring: Keyring | None = None,
        offer_seconds: int = 900,
        journal_url: str | None = None,
    ) -> None:
        def connect(url: str) -> aioredis.Redis:
            return aioredis.from_url(
                url,
                socket_timeout=redis_timeout,
                socket_connect_timeout=redis_timeout,
                retry_on_timeout=False,
            )

        # ``redis_url``: the deployment's Redis (directory, claims, clock); ``journal_url``:
        # where this shard journals, when the directory gives it a server of its own.
        control = connect(redis_url)
        journal_client = control if journal_url in (None, redis_url) else connect(journal_url)
        self.name = name
        self._core = ShardCore(
            name,
            journal_client,
            snapshot_every_events=snapshot_every_events,
            snapshot_every_seconds=snapshot_every_seconds,
            keyring=keyring,
            offer_seconds=offer_seconds,
            control=control,
        )
        self._sweep_seconds = sweep_seconds
        self._roll_seconds = roll_seconds  # how often calendars are checked for a new day
        self._redis = control
        self._journal = journal_client
        self.clock = clock or Clock()
        self._queue: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The snapshot being sealed and stored beside the writer (one at a time), and
        # the callers of write_snapshot waiting for the next one.
        self._storing: asyncio.Task[None] | None = None
        self._committing: asyncio.Task[None] | None = None  # a batch on its way to Redis
        self._snapshot_waiters: list[asyncio.Future[str]] = []
        self.last_recovery: RecoveryStats | None = None
        self.batches = 0
        self._channel: ChannelServer | None = None

    # --- public methods (Ray calls) -----------------------------------------------------

    async def submit(self, commands: bytes) -> list[Outcome]:
        """Apply a batch of commands (:func:`engine.codec.encode_commands`) in order; one
        outcome (result or domain error) each."""
        batch = decode_commands(commands)
        return await self._enqueue(lambda: self._core.apply(batch))  # type: ignore[no-any-return]

    async def channel(self) -> Address:
        """Where this shard's command channel listens (:mod:`actors.channel`): ``submit``
        without a Ray call per batch. Opened at the first ask, on this node's address."""
        if self._channel is None:
            import ray

            host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            self._channel = ChannelServer(self.submit, host)
        return await self._channel.address()

    async def provision(self, provider: Provider, snapshots: list[CalendarSnapshot]) -> Outcome:
        """Add or replace a provider's calendars (journaled)."""
        return await self._enqueue(lambda: self._core.add_calendars(provider, snapshots))  # type: ignore[no-any-return]

    async def provision_many(
        self, items: list[tuple[Provider, list[CalendarSnapshot]]]
    ) -> list[Outcome]:
        """:meth:`provision` for many providers in one call and one commit."""

        def work() -> list[Outcome]:
            out: list[Outcome] = []
            for provider, snapshots in items:
                try:
                    self._core.add_calendars(provider, snapshots)
                    out.append(None)
                except HexbookError as exc:
                    out.append(exc)
            return out

        return await self._enqueue(work)  # type: ignore[no-any-return]

    async def hand_off(self, provider_id: str) -> HandedOff | HexbookError:
        """Give a provider's calendars up to move them (journaled; asked again, the same
        state): from here on its commands answer "unavailable, retry" until it is served
        from its new shard (:mod:`actors.moves`)."""
        return await self._enqueue(lambda: self._core.hand_off(provider_id))  # type: ignore[no-any-return]

    async def take_over(self, handed: HandedOff) -> Outcome:
        """Take a provider's calendars handed off by another shard (journaled)."""
        return await self._enqueue(  # type: ignore[no-any-return]
            lambda: self._core.add_calendars(handed.provider, handed.calendars, take_over=True)
        )

    async def end_hand_off(self, provider_id: str) -> bool | HexbookError:
        """Forget a handed-off provider once its new shard serves it (journaled)."""
        return await self._enqueue(lambda: self._core.end_hand_off(provider_id))  # type: ignore[no-any-return]

    async def handed_off(self) -> list[str]:
        """The providers handed off from here whose move has not ended."""
        await self._ready()
        return sorted(self._core.handed)

    async def providers_in(self, cell: str, resolution: int) -> list[str]:
        """The providers on this shard whose H3 cell at ``resolution`` is ``cell``."""
        await self._ready()
        return sorted(pid for pid, p in self._core.providers.items() if p.cell(resolution) == cell)

    async def waitlist_entries(self) -> list[WaitEntry]:
        """Every entry waiting here (a new shard joins them: every shard holds all)."""
        await self._ready()
        return self._core.waitlist.entries()

    async def slots(self, provider_id: str, service: str) -> dict[str, Any] | HexbookError:
        """A calendar's grid: start, slot length, capacity, booked, held (lists), and the
        slots set below what was taken (``targets``: [slot index, capacity asked])."""
        await self._ready()
        cal = self._core.calendars.get((provider_id, service))
        if cal is None:
            return self._core.missing(provider_id, service)
        return {
            "start": cal.start,
            "slot_seconds": cal.slot_seconds,
            "capacity": cal.capacity.tolist(),
            "booked": cal.booked.tolist(),
            "held": cal.held.tolist(),
            "targets": sorted(cal.capacity_targets().items()),
        }

    async def refused_by(self, rule: Rule, now: int) -> list[tuple[str, str, tuple[str, ...]]]:
        """The active bookings from ``now`` on that ``rule`` would refuse (provider,
        booking id, reasons): what a new rule version asks a person to look at."""
        await self._ready()
        out = []
        for (pid, service), cal in self._core.calendars.items():
            if service != rule.service or rule.provider_id not in (None, pid):
                continue
            for b in cal.bookings.values():
                if b.status == "active" and b.start >= now:
                    reasons = refusals(rule, b.attested, cal.local_day(b.start))
                    if reasons:
                        out.append((pid, b.booking_id, reasons))
        return out

    async def availability(
        self,
        provider_id: str | None = None,
        service: str | None = None,
        calendars: list[tuple[str, str]] | None = None,
    ) -> list[tuple[Provider, str, int, int, bytes]]:
        """Free places of every calendar here (or of one, or of ``calendars``): (provider,
        service, start, slot seconds, remaining as int32 bytes). Loads a search index; a
        calendar asked for that is not here is left out."""
        await self._ready()
        core = self._core
        if calendars is None:
            keys = [k for k in core.calendars if provider_id is None or k == (provider_id, service)]
        else:
            keys = [(p, s) for p, s in calendars]
        return [
            (
                core.providers[pid],
                svc,
                cal.start,
                cal.slot_seconds,
                cal.remaining().astype("<i4").tobytes(),
            )
            for pid, svc in keys
            if (cal := core.calendars.get((pid, svc))) is not None
        ]

    async def provider(self, provider_id: str) -> Provider | HexbookError:
        """The provider record, if it lives on this shard."""
        await self._ready()
        found = self._core.providers.get(provider_id)
        if found is None:
            gone = self._core.missing(provider_id, "")
            return gone if isinstance(gone, Unavailable) else ProviderNotFound(provider_id)
        return found

    async def booking(self, provider_id: str, service: str, booking_id: str) -> Outcome:
        """One booking as the shard holds it, or from the archive when its day has left
        the calendar's window."""
        await self._ready()
        cal = self._core.calendars.get((provider_id, service))
        if cal is None:
            return self._core.missing(provider_id, service)
        found = cal.bookings.get(booking_id)
        if found is None:
            try:
                found = await archive.read_booking(
                    self._journal, provider_id, service, booking_id, self._core.keyring
                )
            except RedisError as exc:
                return Unavailable(f"the archive is unreachable: {exc}")
        return BookingNotFound(booking_id) if found is None else found

    async def hold(self, provider_id: str, service: str, hold_id: str) -> Outcome:
        """One live hold (an expired, released or confirmed one is not found)."""
        await self._ready()
        cal = self._core.calendars.get((provider_id, service))
        if cal is None:
            return self._core.missing(provider_id, service)
        found = cal.holds.get(hold_id)
        if found is None or found.expires_at <= self.clock.seconds():
            return HoldNotFound(hold_id)
        return found

    async def roster(self, provider_id: str, service: str) -> dict[str, Any] | HexbookError:
        """A calendar's schedule and every booking in its window (the site admin's day)."""
        await self._ready()
        cal = self._core.calendars.get((provider_id, service))
        if cal is None:
            return self._core.missing(provider_id, service)
        return {"schedule": cal.schedule, "bookings": list(cal.bookings.values())}

    async def waitlist_join(self, entry: WaitEntry) -> bool:
        """Add a waiting entry (journaled), offered what is free now in its area;
        ``False`` if it was here already."""
        return await self._enqueue(lambda: self._core.join(entry, self.clock.seconds()))  # type: ignore[no-any-return]

    async def waitlist_leave(self, entry_id: str) -> bool:
        """Take an entry off (its owner left); an offer held for it is given back."""
        return await self._enqueue(lambda: self._core.leave(entry_id, self.clock.seconds()))  # type: ignore[no-any-return]

    async def roll(self, now: int | None = None) -> int:
        """Roll every calendar whose day changed (the periodic roll calls this too);
        returns how many rolled."""
        at = self.clock.seconds() if now is None else now
        total = 0
        while True:  # a step per 200 calendars checked: requests are served in between
            rolled: int = await self._enqueue(lambda: self._core.roll(at))
            total += rolled
            if not self._core.roll_more:
                return total

    async def set_clock(self, offset: float, rate: float, anchor: float) -> None:
        """Move this shard's clock (tests and the soak; see :class:`actors.clock.Clock`)."""
        self.clock.set(offset, rate, anchor)

    async def committed_state(self) -> bytes:
        """The encoded state as of the last commit (a ShardSnapshot), for checks."""
        return await self._enqueue(  # type: ignore[no-any-return]
            lambda: journal.encode(self._core.shard_snapshot()), commit=False
        )

    async def erase(
        self, now: int, patient_ref: str | None = None, ended_by: int | None = None
    ) -> int:
        """Erase patient data (``patient_ref``'s, or of appointments ended by
        ``ended_by``) in the calendars and the archive, the waitlist and the outbox,
        then snapshot, so that the journal entries that held it are trimmed. Returns
        how many bookings lost it."""
        await self._ready()
        core = self._core
        erased = 0
        keys = list(core.calendars)
        for i in range(0, len(keys), 200):  # a step per 200 calendars: requests in between
            part = keys[i : i + 200]
            erased += await self._enqueue(
                lambda part=part: core.erase(now, patient_ref, ended_by, part)  # type: ignore[misc]
            )
        waiting: int = await self._enqueue(lambda: core.erase_waiting(now, patient_ref, ended_by))
        try:
            erased += await core.erase_archived(now, patient_ref, ended_by)
            notices = await core.erase_notices(patient_ref, ended_by)
            if erased or waiting or notices:
                await self.write_snapshot()
        except RedisError as exc:
            raise Unavailable(f"shard {self.name}: the erasure is not complete: {exc}") from exc
        return erased

    async def use_keyring(self, keyring: Keyring) -> str | None:
        """Seal from now on with ``keyring`` (a rotation); it must still open what this
        shard wrote. Returns the id of the key that now seals."""
        await self._ready()
        old = self._core.keyring
        missing = [k for k in (old.keys if old else {}) if k not in keyring.keys]
        if missing:
            raise KeyringError(
                f"shard {self.name}: the new keyring lacks key(s) {', '.join(missing)} that "
                "still open stored values: run `hexbook keyring reencrypt` before dropping them"
            )

        def swap() -> None:
            self._core.keyring = keyring

        await self._enqueue(swap, commit=False)
        return keyring.current

    async def reseal(self) -> str:
        """Seal this shard's whole state anew with the current key: a snapshot now, the
        journal trimmed through it. Returns the journal id it covers."""
        return await self.write_snapshot()

    async def write_snapshot(self) -> str:
        """Snapshot now (everything committed before this call, and maybe more) and trim
        the journal; return the journal id it covers."""
        await self._ready()
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._snapshot_waiters.append(fut)
        self._start().set()
        return await fut

    async def sweep(self, now: int) -> int:
        """Expire due holds now (the periodic sweep calls this too)."""
        return await self._enqueue(lambda: self._core.sweep(now))  # type: ignore[no-any-return]

    async def info(self) -> dict[str, Any]:
        """Where this shard runs and what it holds."""
        import ray

        await self._ready()
        rec = self.last_recovery
        return {
            "name": self.name,
            "pid": os.getpid(),
            "clock": self.clock.now(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "calendars": len(self._core.calendars),
            "providers": sorted(self._core.providers),
            "batches": self.batches,
            "last_id": self._core.last_id,
            "recovery": None if rec is None else vars(rec),
        }

    # --- the writer --------------------------------------------------------------------

    def _start(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._write_loop())]
            if self._sweep_seconds > 0:
                self._tasks.append(loop.create_task(self._sweep_loop()))
            if self._roll_seconds > 0:
                self._tasks.append(loop.create_task(self._roll_loop()))
        return self._wake

    async def _ready(self) -> None:
        if not self._core.recovered:
            await self._enqueue(lambda: None)

    async def _enqueue(self, work: Callable[[], Any], commit: bool = True) -> Any:
        wake = self._start()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((work, fut))
        wake.set()
        out = await fut
        if isinstance(out, Unavailable):
            raise out
        return out

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            core = self._core
            if self._committing is None or self._snapshot_waiters or core.snapshot_due():
                await self._committed()  # a snapshot is of durable memory, nothing pending
                self._snapshot_if_due()
            batch, self._queue = self._queue, []
            if batch:
                await self._step(batch)

    async def _step(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> None:
        """Apply a batch, then send its commit once the batch before it is durable; the
        commit answers the batch's callers (or fails stop). So a batch is applied while
        the one before it is on its way to Redis, and is never answered before it and
        everything applied before it is durable."""
        core = self._core
        if not core.recovered:
            await self._committed()  # (a failed commit has already failed stop)
            if self._storing is not None:  # recovery reads the snapshot the store writes
                await asyncio.wait([self._storing])
            try:
                if (kept := clock_from_redis(await self._redis.hgetall(CLOCK_KEY))) is not None:
                    self.clock.set(*kept)  # the stack's clock, if a test or soak moved it
                self.last_recovery = await core.recover(now=self.clock.seconds())
                log.info("shard %s recovered: %s", self.name, self.last_recovery)
            except (RedisError, OSError) as exc:
                _answer_all(batch, Unavailable(f"shard {self.name} cannot reach Redis: {exc}"))
                return
            except KeyringError as exc:  # nothing is served that cannot be read whole
                log.error("shard %s cannot recover: %s", self.name, exc)
                _answer_all(batch, Unavailable(f"shard {self.name} cannot recover: {exc}"))
                return
        outcomes: list[Any] = []
        for work, _ in batch:
            try:
                outcomes.append(work())
            except HexbookError as exc:
                outcomes.append(exc)
        await self._committed()
        if not core.recovered:  # the batch before failed to commit: this one is forgotten
            _answer_all(batch, Unavailable(f"shard {self.name} journal unavailable; retry"))
            return
        try:
            await core.make_offers(self.clock.seconds())  # the batch's freed places
            staged = core.stage()
        except (RedisError, OSError) as exc:
            self._fail_stop(batch, exc)
            return
        self._committing = asyncio.get_running_loop().create_task(
            self._commit(batch, outcomes, staged)
        )

    async def _committed(self) -> None:
        """Until the commit on its way (if any) has ended."""
        if self._committing is not None:
            await asyncio.wait([self._committing])

    async def _commit(
        self,
        batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
        outcomes: list[Any],
        staged: Staged | None,
    ) -> None:
        try:
            if staged is not None:
                await self._core.finish(staged)
        except (RedisError, OSError) as exc:
            self._fail_stop(batch, exc)
            return
        finally:
            self._committing = None
            assert self._wake is not None
            self._wake.set()  # the writer looks again: a snapshot may be due
        self.batches += 1
        for (_, fut), out in zip(batch, outcomes, strict=True):
            if not fut.done():
                fut.set_result(out)

    def _fail_stop(
        self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]], exc: Exception
    ) -> None:
        # Memory may now be ahead of Redis: forget it, rebuild before serving.
        self._core.fail_stop()
        log.error("shard %s: journal append failed, failing stop: %s", self.name, exc)
        _answer_all(batch, Unavailable(f"shard {self.name} journal unavailable: {exc}"))

    def _snapshot_if_due(self) -> None:
        """Between two batches, with nothing pending: copy the state for a snapshot when
        one is due or asked for, and seal and store it beside the writer, which goes on
        serving (a snapshot of 100,000 bookings takes about half a second to seal and
        write; done in the writer's step, every caller waited that long)."""
        core = self._core
        if not core.recovered:  # failed stop: nothing to copy until it has recovered
            waiters, self._snapshot_waiters = self._snapshot_waiters, []
            for fut in waiters:
                fut.set_exception(Unavailable(f"shard {self.name} is recovering; retry shortly"))
            return
        if self._storing is not None or core.has_pending:
            return  # a store is running: the next one starts when it ends
        if not (self._snapshot_waiters or core.snapshot_due()):
            return
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        self._storing = asyncio.get_running_loop().create_task(
            self._store(core.take_snapshot(), core.keyring, waiters)
        )

    async def _store(
        self, snap: ShardSnapshot, ring: Keyring | None, waiters: list[asyncio.Future[str]]
    ) -> None:
        outcome: str | Exception = snap.last_id
        try:
            await self._core.store_snapshot(snap, ring)
        except (RedisError, OSError) as exc:  # the journal still has everything
            log.warning("shard %s: snapshot failed: %s", self.name, exc)
            outcome = Unavailable(f"shard {self.name}: the snapshot was not stored: {exc}")
        finally:
            self._storing = None
            if self._wake is not None:
                self._wake.set()  # whoever asked for a snapshot meanwhile gets the next
        for fut in waiters:
            if not fut.done():
                if isinstance(outcome, Exception):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            core = self._core
            if core.recovered and (
                len(core.waitlist)
                or len(core.timers)
                or any(c.holds for c in core.calendars.values())
            ):
                with contextlib.suppress(Unavailable):  # recovering: the next round sweeps
                    await self.sweep(self.clock.seconds())

    async def _roll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._roll_seconds)
            if self._core.recovered:
                with contextlib.suppress(Unavailable):  # recovering: the next round rolls
                    await self.roll()


def _answer_all(
    batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]], error: Exception
) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_result(error)


def check(outcome: Any) -> Any:
    """Raise an outcome that is an error; return it otherwise."""
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
