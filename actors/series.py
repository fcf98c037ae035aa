"""Dose series across calendars and shards: holds, confirm all or none, cancel.

The protocol is :mod:`engine.series`; this module hosts it. The series record lives in
Redis (``hexbook:series:{id}``) and is written before each step is sent and after its
outcome, so whoever drives the series next (a retry with the same key, another
gateway, the sweeper of :meth:`SeriesBook.resume_stale`) carries on where it stood.
One driver at a time per series (a Redis lock); every step is a calendar command under
a key derived from the series id, so a step sent twice happens once.

A series in a protocol is also in ``hexbook:series:inflight`` (a sorted set, by when it
entered): the sweeper finishes those a client left, so none stays half booked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import LockError

from actors.sealing import Keyring
from engine.eligibility import Attestation, Rule
from engine.errors import HexbookError, InvalidRequest, NotFound, Unavailable
from engine.records import (
    CancelBooking,
    Command,
    ConfirmHold,
    Contact,
    Hold,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
)
from engine.series import (
    TERMINAL,
    Dose,
    Outcome,
    SeriesRecord,
    Step,
    advance_all,
    next_steps,
    request_cancel,
    request_confirm,
    request_move,
)

__all__ = [
    "INFLIGHT_KEY",
    "SeriesAborted",
    "SeriesBook",
    "SeriesBusy",
    "SeriesNotFound",
    "decode_series",
    "encode_series",
    "series_key",
]

INFLIGHT_KEY = "hexbook:series:inflight"
Submit = Callable[[Command], Awaitable[Any]]  # a command -> its result or its error
RuleFor = Callable[[str, str], Awaitable[Rule | None]]  # (provider, service) -> rule
Hook = Callable[[str, Step], Awaitable[None]]
PlannedDose = tuple[str, str, int, str, str]  # provider, service, start, hold id, booking id
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(SeriesRecord)


def series_key(series_id: str) -> str:
    return f"hexbook:series:{series_id}"


def plan_key(series_id: str) -> str:
    return f"hexbook:series-plan:{series_id}"


_NO_KEYS = Keyring()


def decode_series(raw: bytes, series_id: str, ring: Keyring | None = None) -> SeriesRecord:
    """A stored series record (sealed: it holds the patient's contact details)."""
    return _dec.decode((ring or _NO_KEYS).open(bytes(raw), series_key(series_id).encode()))


def encode_series(rec: SeriesRecord, ring: Keyring | None = None) -> bytes:
    return (ring or _NO_KEYS).seal(_enc.encode(rec), series_key(rec.series_id).encode())


class SeriesNotFound(NotFound):
    code = "series_not_found"

    def __init__(self, series_id: str) -> None:
        super().__init__(f"no series {series_id!r}; hold one with POST /v1/series/holds")


class SeriesBusy(Unavailable):
    """Another request is driving this series right now (retry with the same key)."""


class SeriesAborted(HexbookError):
    """The series could not be booked whole, so none of it was (409 series_aborted)."""

    code = "series_aborted"

    def __init__(self, series_id: str, reason: str) -> None:
        super().__init__(
            f"series {series_id!r} was not booked (no dose of it is): {reason}; hold a new series"
        )


async def _noop(_: str, __: Step) -> None:
    return None


class SeriesBook:
    """Hold, confirm and cancel series; ``submit`` sends one command to its shard and
    returns its result or its domain error (``Unavailable`` when the shard did not
    answer), as :meth:`gateway.router.ShardRouter.submit` does."""

    def __init__(
        self,
        client: aioredis.Redis,
        submit: Submit,
        clock: Callable[[], int],
        *,
        hook: Hook = _noop,
        lock_seconds: float = 30.0,
        keyring: Keyring | None = None,
    ) -> None:
        self.redis = client
        self.keyring = keyring  # seals the records (actors.sealing)
        self.submit = submit
        self.clock = clock
        self.hook = hook  # tests act around a step: 'before' it is sent, once 'sent'
        self.lock_seconds = lock_seconds

    # --- the record ----------------------------------------------------------------

    async def get(self, series_id: str) -> SeriesRecord:
        raw: Any = await self.redis.get(series_key(series_id))
        if raw is None:
            raise SeriesNotFound(series_id)
        return decode_series(raw, series_id, self.keyring)

    async def _store(self, rec: SeriesRecord) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(series_key(rec.series_id), encode_series(rec, self.keyring))
        if rec.state in TERMINAL or rec.state == "held":
            pipe.zrem(INFLIGHT_KEY, rec.series_id)
        else:
            pipe.zadd(INFLIGHT_KEY, {rec.series_id: self.clock()}, nx=True)
        await pipe.execute()

    async def erase_contacts(self, patient_ref: str | None, ended_by: int | None) -> int:
        """Drop the contact details of the series of ``patient_ref``, or of those whose
        last dose started a day or more before ``ended_by`` (a day: more than any slot
        lasts, so a series keeps them no shorter than its bookings). Returns how many;
        ``Unavailable`` if some series were being booked meanwhile (repeat it)."""
        erased, busy = 0, 0
        async for key in self.redis.scan_iter(match=series_key("*"), count=500):
            k = key.decode() if isinstance(key, bytes) else str(key)
            if k == INFLIGHT_KEY:
                continue
            try:
                erased += await self._erase_contact(
                    k.removeprefix(series_key("")), patient_ref, ended_by
                )
            except SeriesBusy:
                busy += 1  # a request drives it now: its record is not stored over
        if busy:
            raise Unavailable(f"{busy} series were being booked meanwhile: repeat the erasure")
        return erased

    async def _erase_contact(
        self, series_id: str, patient_ref: str | None, ended_by: int | None
    ) -> int:
        async with self._driving(series_id):
            try:
                rec = await self.get(series_id)
            except SeriesNotFound:
                return 0
            if rec.contact is None:
                return 0
            if patient_ref is not None and rec.patient_ref != patient_ref:
                return 0
            last = max((d.start for d in rec.doses), default=0)
            if ended_by is not None and last + 86_400 > ended_by:
                return 0
            await self._store(msgspec.structs.replace(rec, contact=None))
            return 1

    # --- hold ------------------------------------------------------------------------

    async def hold(
        self,
        series_id: str,
        plan: Callable[[], Awaitable[Sequence[PlannedDose]]],
        party_size: int,
        ttl: int,
        attested: Attestation | None,
        rule_for: RuleFor,
    ) -> SeriesRecord:
        """Hold every dose (provider, service, start, hold id, booking id), or none.
        ``plan`` chooses the doses; it is asked once per series: the plan is stored
        first, so a repeat with the same ``series_id`` (after a 503) holds the same
        slots (its own earlier holds must not make it choose others), and a repeat
        after the series was made answers it."""
        raw: Any = await self.redis.get(series_key(series_id))
        if raw is not None:
            return decode_series(raw, series_id, self.keyring)
        planned: Any = await self.redis.get(plan_key(series_id))
        if planned is None:
            chosen = _enc.encode([tuple(d) for d in await plan()])
            if await self.redis.set(plan_key(series_id), chosen, nx=True, ex=2 * ttl):
                planned = chosen
            else:  # another request for this series stored its plan first: that one
                planned = await self.redis.get(plan_key(series_id))
        doses = msgspec.msgpack.decode(planned, type=list[PlannedDose])
        now = self.clock()
        cmds = [
            PlaceHold(
                pid,
                service,
                f"{series_id}:hold:{i}",
                now,
                hold_id,
                start,
                party_size,
                ttl,
                attested,
                await rule_for(pid, service),
            )
            for i, (pid, service, start, hold_id, _) in enumerate(doses)
        ]
        # Every dose at once (their shards work in parallel); then all or nothing.
        outs = await asyncio.gather(*(self.submit(c) for c in cmds))
        refused = next(
            (o for o in outs if isinstance(o, BaseException) and not isinstance(o, Unavailable)),
            None,
        )
        if refused is not None:
            for k, (cmd, out) in enumerate(zip(cmds, outs, strict=True)):
                # Give back what this series holds, or may hold (no answer came).
                if not isinstance(out, HexbookError) or isinstance(out, Unavailable):
                    key = f"{series_id}:release:{k}"
                    await self._until_answered(
                        ReleaseHold(cmd.provider_id, cmd.service, key, now, cmd.hold_id)
                    )
            raise refused
        for out in outs:
            if isinstance(out, Unavailable):
                raise out  # a retry with the same key places the same holds
        made = []
        for (pid, service, start, _, booking_id), out in zip(doses, outs, strict=True):
            assert isinstance(out, Hold)
            made.append(Dose(pid, service, start, party_size, out.hold_id, booking_id))
        rec = SeriesRecord(series_id, "held", tuple(made), created_at=now)
        await self._store(rec)
        return rec

    async def _until_answered(self, cmd: Command, tries: int = 12) -> object:
        """Send ``cmd`` until its shard answers (a busy gateway says Unavailable at once);
        after ``tries`` a hold left behind still expires with its ttl."""
        out: object = None
        for attempt in range(tries):
            out = await self.submit(cmd)
            if not isinstance(out, Unavailable):
                break
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        return out

    # --- confirm and cancel -----------------------------------------------------------

    async def confirm(
        self,
        series_id: str,
        patient_ref: str,
        token_digest: bytes,
        rule_for: RuleFor,
        contact: Contact | None = None,
    ) -> SeriesRecord:
        """Book every dose or none; raises :class:`SeriesAborted` if none could be, and
        ``Unavailable`` if a shard did not answer (call again: it carries on)."""
        async with self._driving(series_id):
            rec = request_confirm(await self.get(series_id), patient_ref, token_digest, contact)
            if rec.patient_ref != patient_ref:
                raise InvalidRequest(f"series {series_id!r} was confirmed for another patient")
            rec = await self._drive(rec, rule_for)
        if rec.state == "aborted":
            raise SeriesAborted(series_id, rec.reason)
        return rec

    async def cancel(self, series_id: str) -> SeriesRecord:
        """Cancel every dose of a booked series."""
        async with self._driving(series_id):
            rec = request_cancel(await self.get(series_id))
            return await self._drive(rec, None)

    async def move(
        self, series_id: str, plan: Callable[[SeriesRecord], dict[int, int]]
    ) -> SeriesRecord:
        """Move doses of a booked series (``plan``: the record -> dose -> new start, as
        :func:`engine.series.plan_move` makes it). Every dose stays booked throughout;
        if a dose cannot move, those that moved go back, and ``reason`` says why."""
        async with self._driving(series_id):
            rec = await self.get(series_id)
            return await self._drive(request_move(rec, plan(rec)), None)

    async def resume_stale(self, older_than: float, rule_for: RuleFor) -> int:
        """Finish the series left in a protocol for ``older_than`` seconds (a client
        that never came back, a gateway that stopped). Returns how many ended."""
        ended = 0
        cutoff = self.clock() - older_than
        for raw in await self.redis.zrangebyscore(INFLIGHT_KEY, "-inf", cutoff):
            sid = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                async with self._driving(sid):
                    rec = await self._drive(await self.get(sid), rule_for)
            except (Unavailable, SeriesNotFound):
                continue
            ended += rec.state in TERMINAL
        return ended

    def _driving(self, series_id: str) -> Any:
        return _Driving(self, series_id)

    async def _drive(self, rec: SeriesRecord, rule_for: RuleFor | None) -> SeriesRecord:
        await self._store(rec)  # the decision first, then the steps
        while steps := next_steps(rec):
            for step in steps:
                await self.hook("before", step)
            cmds = [await self._command(rec, step, rule_for) for step in steps]
            outs = await asyncio.gather(*(self.submit(c) for c in cmds))  # shards in parallel
            for step in steps:
                await self.hook("sent", step)
            results: list[tuple[Step, Outcome, str]] = []
            for step, out in zip(steps, outs, strict=True):
                if isinstance(out, Unavailable):
                    results.append((step, "unknown", ""))
                elif isinstance(out, BaseException):
                    results.append((step, "refused", f"dose {step.dose + 1}: {out}"))
                else:
                    results.append((step, "ok", ""))
            before = rec.state
            rec = advance_all(rec, results)
            if rec.state != before:
                # Stored when the state changes (undoing, unmoving, the end). The steps
                # between need no record: repeated under their keys, they answer again.
                await self._store(rec)
            unknown = next((o for o in outs if isinstance(o, Unavailable)), None)
            if unknown is not None:
                raise unknown  # the record says where to carry on
        return rec

    async def _command(self, rec: SeriesRecord, step: Step, rule_for: RuleFor | None) -> Command:
        d = rec.doses[step.dose]
        now = self.clock()
        if step.kind == "confirm":
            rule = await rule_for(d.provider_id, d.service) if rule_for is not None else None
            return ConfirmHold(
                d.provider_id,
                d.service,
                step.key,
                now,
                d.hold_id,
                d.booking_id,
                rec.token_digest,
                rec.patient_ref,
                rule,
                rec.series_id,
                rec.contact,
            )
        if step.kind == "cancel":
            return CancelBooking(d.provider_id, d.service, step.key, now, d.booking_id)
        if step.kind == "reschedule":
            return RescheduleBooking(
                d.provider_id, d.service, step.key, now, d.booking_id, d.target
            )
        return ReleaseHold(d.provider_id, d.service, step.key, now, d.hold_id)


class _Driving:
    """One driver per series: a Redis lock, refused at once if held (then retry)."""

    def __init__(self, book: SeriesBook, series_id: str) -> None:
        self.lock = book.redis.lock(
            f"hexbook:series-lock:{series_id}", timeout=book.lock_seconds, blocking=False
        )
        self.series_id = series_id

    async def __aenter__(self) -> None:
        if not await self.lock.acquire():
            raise SeriesBusy(
                f"series {self.series_id!r} is being booked by another request; retry with "
                "the same key"
            )

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(LockError):  # expired meanwhile: the record tells the next
            await self.lock.release()
