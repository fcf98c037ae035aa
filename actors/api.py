"""The Python API that the gateway and the CLIs use to reach the shards.

>>> hb = Hexbook.connect("redis://127.0.0.1:6379/0", shards=2)   # doctest: +SKIP
>>> hb.provision(provider, template, date(2026, 3, 2), days=14)   # doctest: +SKIP
>>> hold = hb.hold("chi-001", "covid-vaccine", start)             # doctest: +SKIP
>>> booking, token = hb.confirm(hold.hold_id, "chi-001", "covid-vaccine", "ref-1")  # doctest: +SKIP

Every mutation carries an idempotency key (one is made when the caller gives none), so
this API retries a call that failed because a shard was restarting or its Redis was
unreachable, with the same key, until ``retry_seconds`` have passed: a retry never books
twice. Named shard actors live in the ``hexbook`` Ray namespace; any process connected
to the same Ray and Redis finds them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
import ray
import redis
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from actors import moves
from actors.clock import CLOCK_KEY, Clock, clock_from_redis, stored
from actors.directory import Directory, default_shards
from actors.ids import calendar_of, new_secret, routable_id, token_digest
from actors.sealing import Keyring
from actors.shard import ShardActor, check
from engine.calendar import Calendar
from engine.codec import encode_commands
from engine.errors import CalendarNotFound, HexbookError, InvalidRequest, Moving, Unavailable
from engine.horizon import RETENTION_SECONDS
from engine.provider import Provider
from engine.records import (
    Booking,
    CalendarSchedule,
    CancelBooking,
    Command,
    ConfirmHold,
    Hold,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
    Result,
    RollCalendar,
    SetCapacity,
)
from engine.schedule import WeeklyTemplate

__all__ = ["NAMESPACE", "Hexbook", "calendar_of", "new_secret", "routable_id", "token_digest"]

NAMESPACE = "hexbook"
SyncRedis = redis.Redis
DEFAULT_HORIZON_DAYS = 28  # a template's calendar keeps this many local days ahead open
_RETRYABLE = (RayActorError, ActorDiedError, ActorUnavailableError, Unavailable)


class Hexbook:
    """A connection to hexbook's shards (Ray) and directory (Redis)."""

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = NAMESPACE,
        detached: bool = False,
        retry_seconds: float = 30.0,
        call_timeout: float = 10.0,
        shard_options: dict[str, Any] | None = None,
        actor_options: dict[str, Any] | Callable[[str], dict[str, Any]] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.detached = detached
        self.retry_seconds = retry_seconds
        self.call_timeout = call_timeout  # a shard that answers nothing for this long is away
        self.shard_options = shard_options or {}  # ShardActor constructor arguments
        # The data keys a shard this connection creates seals with (actors.sealing).
        self.keyring = keyring
        if keyring is not None:
            self.shard_options.setdefault("keyring", keyring)
        # Extra Ray options (scheduling_strategy...), or a function of the shard's name.
        self.actor_options = actor_options or {}
        self._redis = redis.Redis.from_url(redis_url)
        self.directory = Directory(self._redis)
        self._journal_clients: dict[str, SyncRedis] = {}
        self._handles: dict[str, Any] = {}
        self._placement: dict[str, str] = {}
        # The stack's time (holds, rolls); set_clock moves it here and on every shard.
        self.clock = Clock()

    @classmethod
    def connect(
        cls,
        redis_url: str,
        *,
        ray_address: str | None = None,
        shards: int | None = None,
        resolution: int = 8,
        journals: list[str] | None = None,
        **kwargs: Any,
    ) -> Hexbook:
        """Join (or start) Ray, configure the directory if new, and start the shards.

        ``shards`` counts the shards of a new directory (default: :func:`default_shards`),
        ``journals`` names the Redis servers besides this one that its shards journal to
        (spread in turn); a directory already in Redis keeps its own."""
        if not ray.is_initialized():
            ray.init(
                address=ray_address,
                namespace=kwargs.get("namespace", NAMESPACE),
                log_to_driver=False,
            )
        hb = cls(redis_url, **kwargs)
        if (settings := clock_from_redis(hb._redis.hgetall(CLOCK_KEY))) is not None:
            hb.clock.set(*settings)  # a clock moved by an earlier process of this stack
        count = default_shards() if shards is None else shards
        hb.directory.configure([f"shard-{i}" for i in range(count)], resolution, journals)
        for name in hb.directory.shards:
            hb.shard(name)
        return hb

    @property
    def redis(self) -> redis.Redis:
        """The synchronous Redis client of this connection (directory, keys, imports)."""
        return self._redis

    def stream_urls(self) -> list[str]:
        """The Redis servers shards journal to, this one first (each has its own
        availability stream and outbox; ADR 0025)."""
        return [self.redis_url, *self.directory.journal_urls()]

    def journal_redis(self, shard: str) -> SyncRedis:
        """A synchronous client of the Redis ``shard`` journals to."""
        return self._client_of(self.directory.journal_of(shard))

    def stream_clients(self) -> list[SyncRedis]:
        """A synchronous client of each of :meth:`stream_urls`, in that order."""
        return [self._client_of(url) for url in self.stream_urls()]

    def _client_of(self, url: str | None) -> SyncRedis:
        if url is None or url == self.redis_url:
            return self._redis
        client = self._journal_clients.get(url)
        if client is None:
            client = self._journal_clients[url] = redis.Redis.from_url(url)
        return client

    def shard(self, name: str, *, detached: bool | None = None) -> Any:
        """The handle of shard ``name``, creating the actor if it does not exist
        (``detached``: it outlives this process; default: this connection's choice)."""
        handle = self._handles.get(name)
        if handle is None:
            options: dict[str, Any] = {
                "name": name,
                "namespace": self.namespace,
                "get_if_exists": True,
                "max_restarts": -1,
                "max_task_retries": 0,  # retried here, with the same idempotency key
                "max_concurrency": 1000,
            }
            if self.detached if detached is None else detached:
                options["lifetime"] = "detached"
            extra = self.actor_options
            options.update(extra(name) if callable(extra) else extra)
            remote = ray.remote(ShardActor).options(**options)
            handle = remote.remote(
                name,
                self.redis_url,
                **{
                    "clock": self.clock,
                    "journal_url": self.directory.journal_of(name),
                    **self.shard_options,
                },
            )
            self._handles[name] = handle
        return handle

    def _call(self, shard: str, method: str, *args: Any) -> Any:
        """Call a shard, retrying (same arguments, so same keys) while it is unavailable."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                ref = getattr(self.shard(shard), method).remote(*args)
                return ray.get(ref, timeout=self.call_timeout)
            except GetTimeoutError as exc:
                # A stalled shard: the call may still be applied later, and is safe to
                # repeat under its key; the caller hears "unavailable", not a hang.
                raise Unavailable(
                    f"shard {shard} did not answer within {self.call_timeout:g} s; retry shortly"
                ) from exc
            except _RETRYABLE:
                # The handle stays: it follows the actor across restarts, and dropping the
                # last handle of a non-detached actor would destroy it for good.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def use_keyring(self, keyring: Keyring) -> dict[str, str | None]:
        """Make every shard seal with ``keyring`` from now on (after a rotation)."""
        self.keyring = keyring
        self.shard_options["keyring"] = keyring
        return {s: self._call(s, "use_keyring", keyring) for s in self.directory.shards}

    def reseal(self) -> dict[str, str]:
        """Every shard writes its state anew under its current key (a snapshot) and
        trims its journal through it; returns the journal id each snapshot covers."""
        return {s: self._call(s, "reseal") for s in self.directory.shards}

    def set_clock(self, offset: float = 0.0, rate: float = 1.0) -> None:
        """Move the stack's clock (tests, the soak): ``offset`` seconds ahead, running
        ``rate`` times as fast, here and on every shard (one anchor, so they agree)."""
        self.clock.set(offset, rate)
        args = self.clock.settings()
        self._redis.hset(CLOCK_KEY, mapping=dict(stored(args)))  # type: ignore[arg-type]
        for name in self.directory.shards:
            self._call(name, "set_clock", *args)

    def now(self, now: int | None = None) -> int:
        """``now`` if given, else the stack's clock in whole UTC seconds."""
        return self.clock.seconds() if now is None else now

    def submit(self, shard: str, commands: list[Command]) -> list[Any]:
        """Send commands to one shard in one call; one outcome (result or error) each."""
        return self._call(shard, "submit", encode_commands(commands))  # type: ignore[no-any-return]

    def cached_shard(self, provider_id: str) -> str | None:
        """The provider's shard if this client knows it already (no Redis call)."""
        return self._placement.get(provider_id)

    def relocated(self, provider_id: str, shard: str) -> str | None:
        """After ``shard`` said it has no such calendar: the provider's shard read again
        from the directory if it moved elsewhere, else ``None`` (the answer stands)."""
        moved = self.shard_of(provider_id, refresh=True)
        return moved if moved != shard else None

    def shard_of(self, provider_id: str, *, refresh: bool = False) -> str:
        """The shard of a provider, from this client's cache of the directory."""
        shard = None if refresh else self._placement.get(provider_id)
        if shard is None:
            try:
                shard = self.directory.shard_of(provider_id)
            except redis.RedisError as exc:
                raise Unavailable(f"the directory in Redis is unreachable: {exc}") from exc
            self._placement[provider_id] = shard
        return shard

    def _one(self, command: Command) -> Result:
        shard = self.shard_of(command.provider_id)
        outcome = self.submit(shard, [command])[0]
        if isinstance(outcome, CalendarNotFound | Moving) and (
            moved := self.relocated(command.provider_id, shard)
        ):
            outcome = self.submit(moved, [command])[0]
        return check(outcome)  # type: ignore[no-any-return]

    # --- provisioning ------------------------------------------------------------------

    def provision(
        self,
        provider: Provider,
        template: WeeklyTemplate,
        first_day: date,
        days: int = 14,
        slot_minutes: int = 15,
        *,
        dedicated: bool = False,
        horizon_days: int = DEFAULT_HORIZON_DAYS,
    ) -> str:
        """Create or replace a provider's calendars (one per service); returns its shard.
        The template keeps ``horizon_days`` local days ahead open as days pass
        (:mod:`engine.horizon`; 0: only the days given)."""
        if dedicated:
            self.directory.dedicate(provider.provider_id)
        shard = self.directory.place(provider)
        snaps = [
            Calendar.from_template(
                provider.provider_id,
                s,
                provider.timezone,
                template,
                first_day,
                days,
                slot_minutes,
                horizon_days,
            ).snapshot()
            for s in provider.services
        ]
        check(self._call(shard, "provision", provider, snaps))
        self._placement[provider.provider_id] = shard
        return shard

    def provision_many(
        self,
        items: list[tuple[Provider, WeeklyTemplate]],
        first_day: date,
        days: int = 14,
        slot_minutes: int = 15,
        *,
        chunk: int = 100,
        progress: Callable[[int], None] | None = None,
        horizon_days: int = DEFAULT_HORIZON_DAYS,
    ) -> int:
        """Provision many providers, ``chunk`` at a time per shard; returns how many.
        ``progress(n)`` is called with the count done so far."""
        by_shard: dict[str, list[tuple[Provider, list[Any]]]] = {}
        for provider, template in items:
            snaps = [
                Calendar.from_template(
                    provider.provider_id,
                    s,
                    provider.timezone,
                    template,
                    first_day,
                    days,
                    slot_minutes,
                    horizon_days,
                ).snapshot()
                for s in provider.services
            ]
            by_shard.setdefault(self.directory.place(provider), []).append((provider, snaps))
        done = 0
        for shard, entries in by_shard.items():
            for i in range(0, len(entries), chunk):
                part = entries[i : i + chunk]
                for outcome in self._call(shard, "provision_many", part):
                    check(outcome)
                for provider, _ in part:
                    self._placement[provider.provider_id] = shard
                done += len(part)
                if progress is not None:
                    progress(done)
        return done

    def move_cell(self, cell: str, to_shard: str) -> list[str]:
        """Map ``cell`` to ``to_shard`` and move its providers there, online and
        resumable (:mod:`actors.moves`); returns the ids moved."""
        return moves.move_cell(self, cell, to_shard)

    def move_provider(self, provider_id: str, to_shard: str) -> bool:
        """Move one provider to ``to_shard`` (:func:`actors.moves.move_provider`)."""
        return moves.move_provider(self, provider_id, to_shard)

    def promote(self, provider_id: str) -> str:
        """Give a hot site a shard of its own (:func:`actors.moves.promote`)."""
        return moves.promote(self, provider_id)

    def resume_moves(self) -> list[str]:
        """Finish every move a crash cut short (:func:`actors.moves.resume`)."""
        return moves.resume(self)

    # --- the booking verbs ---------------------------------------------------------------

    def hold(
        self,
        provider_id: str,
        service: str,
        start: int,
        party_size: int = 1,
        *,
        ttl: int = 300,
        key: str | None = None,
        now: int | None = None,
    ) -> Hold:
        """Hold places in a slot (UTC ``start``) for ``ttl`` seconds."""
        cmd = PlaceHold(
            provider_id,
            service,
            key or new_secret(),
            self.now(now),
            routable_id(provider_id, service),
            start,
            party_size,
            ttl,
        )
        return self._one(cmd)  # type: ignore[return-value]

    def confirm(
        self,
        hold_id: str,
        provider_id: str,
        service: str,
        patient_ref: str,
        *,
        key: str | None = None,
        now: int | None = None,
        keep_digest: bytes | None = None,
    ) -> tuple[Booking, str]:
        """Confirm a hold; returns the booking and its token (shown once, stored hashed).
        ``keep_digest``: the booking takes this token digest instead of a new token (a
        booking that moves keeps its token); the token returned is then ``""``."""
        token = "" if keep_digest is not None else new_secret()
        digest = keep_digest if keep_digest is not None else token_digest(token)
        cmd = ConfirmHold(
            provider_id,
            service,
            key or new_secret(),
            self.now(now),
            hold_id,
            routable_id(provider_id, service),
            digest,
            patient_ref,
        )
        booking = self._one(cmd)
        if not isinstance(booking, Booking):
            raise TypeError("confirm answered with a hold")
        if booking.token_digest != digest:
            token = ""  # a repeat of an earlier confirm: the token was given out then
        return booking, token

    def release(
        self,
        hold_id: str,
        provider_id: str,
        service: str,
        *,
        key: str | None = None,
        now: int | None = None,
    ) -> Hold:
        """Release a hold."""
        cmd = ReleaseHold(provider_id, service, key or new_secret(), self.now(now), hold_id)
        return self._one(cmd)  # type: ignore[return-value]

    def cancel(
        self,
        booking_id: str,
        provider_id: str,
        service: str,
        *,
        key: str | None = None,
        now: int | None = None,
    ) -> Booking:
        """Cancel a booking."""
        cmd = CancelBooking(provider_id, service, key or new_secret(), self.now(now), booking_id)
        return self._one(cmd)  # type: ignore[return-value]

    def reschedule(
        self,
        booking_id: str,
        provider_id: str,
        service: str,
        new_start: int,
        *,
        new_provider_id: str | None = None,
        new_service: str | None = None,
        key: str | None = None,
        now: int | None = None,
    ) -> Booking:
        """Move a booking to ``new_start`` (at ``new_provider_id``/``new_service`` if given).

        Within one calendar this is one command, all or nothing. To another calendar
        (maybe on another shard) it is three journaled, idempotent steps under keys
        derived from ``key``: hold the new slot, confirm it, cancel the old booking. If
        the hold or confirm fails the old booking is untouched (and the hold released);
        if the cancel cannot be done now, calling again with the same ``key`` finishes
        the move without booking twice. The new booking keeps the old one's token.
        Returns the booking as it is after the move."""
        key = key or new_secret()
        to_provider, to_service = new_provider_id or provider_id, new_service or service
        if (to_provider, to_service) == (provider_id, service):
            cmd = RescheduleBooking(provider_id, service, key, self.now(now), booking_id, new_start)
            return self._one(cmd)  # type: ignore[return-value]
        shard = self.shard_of(provider_id)
        old = check(self._call(shard, "booking", provider_id, service, booking_id))
        if old.status != "active":
            # Either this move already cancelled it (then the cancel step repeats and the
            # other steps return their first results below) or it is simply not active:
            # then the keyed cancel is a new command and raises BookingNotActive.
            self.cancel(booking_id, provider_id, service, key=f"{key}:cancel", now=now)
        hold = self.hold(
            to_provider, to_service, new_start, old.party_size, ttl=120, key=f"{key}:hold", now=now
        )
        try:
            new, _ = self.confirm(
                hold.hold_id,
                to_provider,
                to_service,
                old.patient_ref,
                key=f"{key}:confirm",
                now=now,
                keep_digest=old.token_digest,  # the patient's token follows the booking
            )
        except HexbookError:
            with contextlib.suppress(HexbookError):
                self.release(hold.hold_id, to_provider, to_service, key=f"{key}:release")
            raise
        self.cancel(booking_id, provider_id, service, key=f"{key}:cancel", now=now)
        return new

    def provision_grid(
        self, provider: Provider, grids: dict[str, tuple[int, int, np.ndarray]]
    ) -> str:
        """Create or replace a provider's calendars from explicit grids (service ->
        (UTC start, slot seconds, capacity per slot)), e.g. imported slots. Replacing a
        calendar with bookings or holds is a ScheduleConflict; use :meth:`set_capacity`."""
        if set(grids) != set(provider.services):
            raise InvalidRequest(
                f"grids for {sorted(grids)} do not match the services {list(provider.services)}"
            )
        shard = self.directory.place(provider)
        snaps = [
            Calendar(
                provider.provider_id,
                s,
                start,
                step,
                np.asarray(cap, dtype=np.uint16),
                CalendarSchedule(provider.timezone, step // 60),  # days come from imports
            ).snapshot()
            for s, (start, step, cap) in grids.items()
        ]
        check(self._call(shard, "provision", provider, snaps))
        self._placement[provider.provider_id] = shard
        return shard

    def set_capacity(
        self, provider_id: str, service: str, capacity: np.ndarray, *, now: int | None = None
    ) -> list[tuple[int, int, int]]:
        """Set every slot's capacity of a calendar, keeping its bookings and holds. Returns
        the conflicts: (slot start, places taken, capacity asked) where the new capacity is
        below what is taken; those slots show no free place and fall to the capacity asked
        as places are given back."""
        data = np.asarray(capacity).clip(0, 65_535).astype(np.uint16).tobytes()
        self._one(SetCapacity(provider_id, service, None, self.now(now), data))
        grid = self.slots(provider_id, service)
        return [
            (grid["start"] + i * grid["slot_seconds"], grid["booked"][i] + grid["held"][i], t)
            for i, t in grid["targets"]
        ]

    def booking(self, provider_id: str, service: str, booking_id: str) -> Booking:
        """A booking as its shard holds it (or its archive, once its day has left)."""
        shard = self.shard_of(provider_id)
        found: Booking = check(self._call(shard, "booking", provider_id, service, booking_id))
        return found

    def extend(self, provider_id: str, service: str, end: int, *, now: int | None = None) -> None:
        """Extend a calendar to ``end`` (UTC, on its grid) with closed slots, e.g. for the
        new days of a rolling import, whose capacity then comes with
        :meth:`set_capacity`. Past days leave by the shard's own daily roll."""
        for attempt in range(3):
            grid = self.slots(provider_id, service)
            added = (end - grid["start"]) // grid["slot_seconds"] - len(grid["capacity"])
            cmd = RollCalendar(
                provider_id,
                service,
                self.now(now),
                grid["start"],
                end,
                bytes(2 * max(added, 0)),
                self.now(now) - RETENTION_SECONDS,
            )
            try:
                self._one(cmd)
                return
            except InvalidRequest:
                # The shard's daily roll moved the start between the read and the
                # extend (a fresh-clone run saw it): read the grid again.
                if attempt == 2:
                    raise

    def slots(self, provider_id: str, service: str) -> dict[str, Any]:
        """A calendar's grid, read from its shard (authoritative)."""
        shard = self.shard_of(provider_id)
        outcome = self._call(shard, "slots", provider_id, service)
        if isinstance(outcome, CalendarNotFound | Moving) and (
            moved := self.relocated(provider_id, shard)
        ):
            outcome = self._call(moved, "slots", provider_id, service)
        return check(outcome)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._redis.close()
