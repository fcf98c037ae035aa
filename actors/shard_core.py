"""The state of one shard and its durability, without Ray: calendars in memory, a batch
applied in one uninterrupted step, group commit to Redis, snapshots, recovery.

:class:`actors.shard.ShardActor` hosts one of these in a Ray actor; tests use it
directly against a real redis-server.

Order of a batch (``apply`` then ``commit``): every command of the batch is applied to
memory with no await in between (single writer, no locks); the events go to Redis in one
MULTI/EXEC; only when Redis has answered are the results released to the callers. If
the append fails, the caller must call :meth:`ShardCore.fail_stop`: memory may hold
changes Redis does not, so the shard forgets everything and rebuilds from Redis.
"""

from __future__ import annotations

import asyncio
import gc
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors import archive, availability, journal, outbox
from actors import waitlist as claims
from actors.ids import routable_id
from actors.journal import (
    CalendarAdded,
    CalendarEvents,
    CalendarRemoved,
    HandedOff,
    HandOffEnded,
    JournalBatch,
    JournalEntry,
    ShardSnapshot,
    WaitlistEvents,
)
from actors.sealing import Keyring
from engine.calendar import Calendar
from engine.codec import Outcome
from engine.errors import (
    CalendarNotFound,
    HexbookError,
    InvalidRequest,
    Moving,
    ScheduleConflict,
    Unavailable,
)
from engine.horizon import next_roll_at, plan_roll
from engine.notices import Notice, Timers, notices_of
from engine.provider import Provider
from engine.records import (
    AttendanceMarked,
    Booking,
    BookingCancelled,
    BookingRescheduled,
    CalendarRolled,
    CalendarSnapshot,
    Command,
    Contact,
    ErasePatientData,
    Event,
    HoldConfirmed,
    HoldPlaced,
    HoldReleased,
    PatientDataErased,
    ReleaseHold,
)
from engine.waitlist import (
    OFFER_ENDS,
    Offers,
    WaitEntry,
    Waitlist,
    WaitlistLeft,
    freed_starts,
    offer_hold,
    open_starts,
    plan_offers,
)

__all__ = ["RecoveryStats", "ShardCore", "Staged"]

CalendarKey = tuple[str, str]
_ENCODE_STRETCH = 64 * 1024  # bytes of a snapshot encoded between two turns of the loop


def _after(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (``"5-3"`` -> ``"5-4"``)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


@dataclass
class RecoveryStats:
    """What a recovery read and how long it took."""

    calendars: int = 0
    batches: int = 0
    events: int = 0
    seconds: float = 0.0


@dataclass
class _Pending:
    """A batch applied in memory and not yet durable."""

    entries: list[JournalEntry] = field(default_factory=list)
    touched: dict[tuple[str, str, int], None] = field(default_factory=dict)  # slots changed
    whole: dict[tuple[str, str], None] = field(default_factory=dict)  # calendars changed
    archived: list[tuple[str, str, Booking]] = field(default_factory=list)  # to the archive
    events: int = 0
    # Slots where places may have come free (offered to the waitlist before the commit),
    # and offers that ended (entry id, hold id, how): their claims end with the commit.
    freed: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    ended: list[tuple[str, str, str]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)  # to the outbox, with the batch


@dataclass(frozen=True, slots=True)
class Staged:
    """A batch taken from memory with its MULTI/EXEC written, not yet sent
    (:meth:`ShardCore.stage`, then :meth:`ShardCore.finish`)."""

    pending: _Pending
    pipe: Any  # redis.asyncio's Pipeline


class ShardCore:
    """Calendars of one shard, their journal and snapshots in Redis."""

    def __init__(
        self,
        name: str,
        redis_client: aioredis.Redis,
        *,
        snapshot_every_events: int = 200_000,
        snapshot_every_seconds: float = 300.0,
        availability_maxlen: int = 1_000_000,
        keyring: Keyring | None = None,
        offer_seconds: int = 900,
        control: aioredis.Redis | None = None,
    ) -> None:
        self.name = name
        # The shard's own Redis (journal, snapshot, archive, outbox, availability stream)
        # and the deployment's (directory, waitlist claims): the same server unless the
        # directory gives the shard a journal of its own (ADR 0025).
        self.redis = redis_client
        self.control = redis_client if control is None else control
        # Seals what is written (journal, snapshot, archive) and opens what is read;
        # without keys, values are written clear (engine benches, tests of the format).
        self.keyring = keyring
        self.snapshot_every_events = snapshot_every_events
        self.snapshot_every_seconds = snapshot_every_seconds
        self.availability_maxlen = availability_maxlen
        self.calendars: dict[CalendarKey, Calendar] = {}
        self.providers: dict[str, Provider] = {}
        # Providers handed off to another shard whose move has not ended: their last
        # state, kept (journaled) so that a move cut short resumes; nothing is served
        # from it (their commands are "unavailable, retry": the move is under way).
        self.handed: dict[str, HandedOff] = {}
        self.recovered = False
        self.last_id = "0-0"
        self.events_since_snapshot = 0
        self.snapshot_missed = False  # a store failed: the next one is due at once
        self.last_snapshot_at = time.monotonic()
        self._pending = _Pending()
        # When each calendar next needs a roll (its next local midnight), so that a check
        # costs a comparison per calendar, not a plan.
        self._roll_due: dict[CalendarKey, int] = {}
        self.roll_more = False  # the last roll() stopped at its limit: more are due
        # Every waiting entry (engine.waitlist), the offers held for them here, and how
        # long an offer stands before it passes to the next in line.
        self.waitlist = Waitlist()
        self.offers = Offers()
        self.offer_seconds = offer_seconds
        # Notices due at a time (reminders, offers about to lapse; engine.notices).
        self.timers = Timers(lead=max(1, offer_seconds // 3))
        self._claim = self.control.register_script(claims.CLAIM)
        self._finish = self.control.register_script(claims.FINISH)
        self._unclaim = self.control.register_script(claims.UNCLAIM)
        # Offers ended in the journal since the snapshot (entry id -> how), seen
        # while replaying: their claims may not have been finished (a crash between the
        # commit and the claim's end), and recovery finishes them.
        self._ended: dict[str, str] = {}

    # --- recovery --------------------------------------------------------------------

    async def recover(self, chunk: int = 500, now: int | None = None) -> RecoveryStats:
        """Load the snapshot and replay the journal after it (``now``: the stack's time,
        for what the recovery itself changes). Raises Redis errors."""
        t0 = time.perf_counter()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a bulk load of long-lived objects: no point scanning them midway
        try:
            return await self._recover(chunk, t0, int(time.time()) if now is None else now)
        finally:
            if gc_was_enabled:
                gc.enable()

    async def _recover(self, chunk: int, t0: float, now: int) -> RecoveryStats:
        self.calendars, self.providers, self.handed = {}, {}, {}
        self._pending = _Pending()
        self._roll_due = {}
        self._ended = {}
        stats = RecoveryStats()
        if self.keyring is not None:
            self.keyring = self.keyring.reload()  # a key rotated since this shard began
        raw = await self.redis.get(journal.snapshot_key(self.name))
        self.last_id = "0-0"
        self.waitlist = Waitlist()
        if raw is not None:
            snap = journal.open_snapshot(raw, self.keyring, self.name)  # type: ignore[arg-type]
            self.last_id = snap.last_id
            self.waitlist = Waitlist(snap.waitlist)
            self.providers = {p.provider_id: p for p in snap.providers}
            self.handed = {h.provider.provider_id: h for h in snap.handed}
            for cs in snap.calendars:
                self.calendars[(cs.provider_id, cs.service)] = Calendar.from_snapshot(cs)
        after = self.last_id
        key = journal.journal_key(self.name)
        while True:
            rows = await self.redis.xrange(key, min=f"({after}", max="+", count=chunk)
            if not rows:
                break
            for entry_id, fields in rows:
                batch = journal.open_batch(fields[b"b"], self.keyring, self.name)  # type: ignore[index, arg-type]
                stats.events += self._replay(batch)
                stats.batches += 1
                after = entry_id.decode()  # type: ignore[union-attr]
        for cal in self.calendars.values():
            cal.rebuild_expiry()
        self.offers = Offers.of(self.calendars.values())
        self.timers = Timers(lead=self.timers.lead)
        self.timers.arm_all(self.calendars.values())
        self.last_id = after
        await self._reconcile_claims(now)
        self.recovered = True
        self.events_since_snapshot = stats.events
        self.last_snapshot_at = time.monotonic()
        stats.calendars = len(self.calendars)
        stats.seconds = time.perf_counter() - t0
        gc.collect()
        gc.freeze()  # long-lived calendar records: keep them out of every GC scan
        return stats

    def _replay(self, batch: JournalBatch) -> int:
        events = 0
        calendars = self.calendars
        for entry in batch.entries:
            if isinstance(entry, CalendarEvents):
                calendars[(entry.provider_id, entry.service)].replay(
                    entry.events, rebuild_expiry=False
                )
                events += len(entry.events)
            elif isinstance(entry, CalendarAdded):
                self._add(entry.provider, Calendar.from_snapshot(entry.snapshot))
            elif isinstance(entry, WaitlistEvents):
                for event in entry.events:
                    self.waitlist.apply(event)
                    if isinstance(event, WaitlistLeft) and event.reason in OFFER_ENDS:
                        self._ended[event.entry_id] = event.reason
            elif isinstance(entry, HandOffEnded):
                self.handed.pop(entry.provider_id, None)
            else:
                self._remove(entry.snapshot.provider_id, entry.snapshot.service)
                if entry.provider is not None:
                    self._keep_handed(entry.provider, entry.snapshot)
        return events

    def _keep_handed(self, provider: Provider, snap: CalendarSnapshot) -> None:
        had = self.handed.get(provider.provider_id)
        kept = [c for c in had.calendars if c.service != snap.service] if had else []
        self.handed[provider.provider_id] = HandedOff(provider, [*kept, snap])

    async def _reconcile_claims(self, now: int, chunk: int = 500) -> None:
        """After a recovery: finish the claims of offers the journal ended (a crash came
        between the commit and the claim's end), take back the claims of offers this
        shard made but never committed, take off the entries that are over, and give
        back an offer held for an entry whose claim is no longer that offer (its owner
        left meanwhile). Raises Redis errors."""
        ids = [e.entry_id for e in self.waitlist.entries()]
        ids += [e for e in self.offers.by_entry if e not in self.waitlist]
        ids += [e for e in self._ended if e not in self.waitlist and e not in self.offers.by_entry]
        for i in range(0, len(ids), chunk):
            part = ids[i : i + chunk]
            raws = await self.control.mget([claims.claim_key(e) for e in part])
            for entry_id, raw in zip(part, raws, strict=True):
                claim = claims.parse_claim(raw)
                held = self.offers.by_entry.get(entry_id)
                if held is not None and claim.hold_id != held:
                    self._release_offer(held, now)
                how = self._ended.get(entry_id)
                if (
                    how is not None
                    and claim.state == "offered"
                    and claim.hold_id not in self.offers.by_hold
                ):
                    # The entry's offer ended in the journal (an entry is over once its
                    # offer ends, so no later offer was claimed): that is this claim.
                    await self._finish(
                        keys=[claims.claim_key(entry_id)],
                        args=[claim.hold_id or "", f"done:{how}", claims.DONE_TTL_SECONDS],
                    )
                elif claim.state == "offered":
                    # An offer this shard claimed for a site it still hosts, not in its
                    # journal: never committed. (A site that moved took its offers along.)
                    if (
                        claim.shard == self.name
                        and claim.provider_id in self.providers
                        and claim.hold_id not in self.offers.by_hold
                    ):
                        key = claims.claim_key(entry_id)
                        await self._unclaim(keys=[key], args=[claim.hold_id or ""])
                elif claim.state != "waiting":
                    self.waitlist.leave(entry_id, "taken", now)
        self._ended = {}
        self._journal_waitlist()

    def _release_offer(self, hold_id: str, now: int) -> None:
        for (pid, service), cal in self.calendars.items():
            if hold_id in cal.holds:
                self.apply([ReleaseHold(pid, service, None, now, hold_id)])
                return

    def fail_stop(self) -> None:
        """Forget all state: memory may be ahead of Redis. The next call recovers."""
        self.recovered = False
        self.calendars, self.providers, self.handed = {}, {}, {}
        self._pending = _Pending()
        self._roll_due = {}
        self.waitlist, self.offers = Waitlist(), Offers()

    def require_recovered(self) -> None:
        if not self.recovered:
            raise Unavailable(f"shard {self.name} is recovering; retry shortly")

    # --- applying --------------------------------------------------------------------

    def _add(self, provider: Provider, cal: Calendar) -> None:
        self.handed.pop(provider.provider_id, None)  # it came back: the move is over
        self.providers[provider.provider_id] = provider
        self.calendars[(cal.provider_id, cal.service)] = cal

    def _remove(self, provider_id: str, service: str) -> Calendar | None:
        cal = self.calendars.pop((provider_id, service), None)
        if not any(k[0] == provider_id for k in self.calendars):
            self.providers.pop(provider_id, None)
        return cal

    def add_calendars(
        self,
        provider: Provider,
        snapshots: Sequence[CalendarSnapshot],
        *,
        take_over: bool = False,
    ) -> None:
        """Add (or replace) a provider's calendars; journaled with the next commit.
        A provider handed off from here is :class:`Moving` (its move ends first).

        ``take_over``: the calendars come from another shard (a move); their offers and
        reminders go on here. A provider hosted here already took them over before (a
        move that resumes, or two movers at once): what is here is kept, since it
        derives from the same hand-off and may have served commands since."""
        if take_over and provider.provider_id in self.providers:
            return
        if not take_over and provider.provider_id in self.handed:
            raise self.missing(provider.provider_id, "")
        for snap in snapshots:
            if snap.provider_id != provider.provider_id or snap.service not in provider.services:
                raise InvalidRequest(
                    f"calendar {snap.provider_id}/{snap.service} does not belong to provider "
                    f"{provider.provider_id!r} with services {list(provider.services)}"
                )
        for snap in snapshots:
            current = self.calendars.get((snap.provider_id, snap.service))
            if current is not None:
                active = sum(b.status == "active" for b in current.bookings.values())
                if active or current.holds:
                    raise ScheduleConflict(
                        f"provider {snap.provider_id!r} ({snap.service}) has {active} active "
                        f"booking(s) and {len(current.holds)} hold(s); replacing its schedule "
                        "would drop them. Nothing was changed."
                    )
        for snap in snapshots:
            cal = Calendar.from_snapshot(snap)
            self._add(provider, cal)
            self._pending.entries.append(CalendarAdded(provider, snap))
            self._pending.whole[(snap.provider_id, snap.service)] = None
            if take_over:
                for hold in cal.holds.values():
                    if hold.offer is not None:
                        self.offers.by_hold[hold.hold_id] = hold.offer
                        self.offers.by_entry[hold.offer] = hold.hold_id
                self.timers.arm_all([cal])

    def hand_off(self, provider_id: str) -> HandedOff:
        """Give a provider's calendars up (to move them to another shard); journaled,
        and kept here, unserved, until :meth:`end_hand_off`. Asked again (a move that
        resumes), it answers the state it gave up the first time."""
        if (handed := self.handed.get(provider_id)) is not None:
            return handed
        provider = self.providers.get(provider_id)
        if provider is None:
            raise InvalidRequest(f"provider {provider_id!r} is not on shard {self.name}")
        snaps = []
        for service in provider.services:
            cal = self._remove(provider_id, service)
            if cal is not None:
                snap = cal.snapshot()
                snaps.append(snap)
                self._pending.entries.append(CalendarRemoved(snap, provider))
                self._pending.whole[(provider_id, service)] = None
        self.handed[provider_id] = handed = HandedOff(provider, snaps)
        self.offers = Offers.of(self.calendars.values())  # its offers went with it
        return handed

    def end_hand_off(self, provider_id: str) -> bool:
        """Forget a handed-off provider (its new shard serves it); journaled. ``False``
        if there was nothing to forget (a move that resumes)."""
        handed = self.handed.pop(provider_id, None)
        if handed is None:
            return False
        self._pending.entries.append(HandOffEnded(provider_id))
        for cal in handed.calendars:  # gateways read them whole again, from the new shard
            self._pending.whole[(provider_id, cal.service)] = None
        return True

    def missing(self, provider_id: str, service: str) -> HexbookError:
        """What a call for a calendar that is not here answers: "unavailable, retry"
        while the provider is being moved away, else "not found" (the caller looks in
        the directory again: it may have moved)."""
        if provider_id in self.handed:
            return Moving(f"provider {provider_id!r} is moving to another shard; retry shortly")
        return CalendarNotFound(provider_id, service)

    def apply(self, commands: Iterable[Command]) -> list[Outcome]:
        """Apply commands in order, with no await: one outcome (result or error) each."""
        out: list[Outcome] = []
        pending = self._pending
        for cmd in commands:
            cal = self.calendars.get((cmd.provider_id, cmd.service))
            if cal is None:
                out.append(self.missing(cmd.provider_id, cmd.service))
                continue
            try:
                out.append(cal.handle(cmd))
            except HexbookError as exc:
                out.append(exc)
            if cal.outbox:
                self._collect(cal, cal.drain(), pending)
        return out

    def roll(self, now: int, limit: int = 200) -> int:
        """Check up to ``limit`` calendars that are due a check, and roll those whose day
        changed (:func:`engine.horizon.plan_roll`: past days out, the horizon's new days
        in, old memories forgotten); journaled with the next commit. Returns how many
        rolled; call again while :attr:`roll_more` (a day's first check is due for every
        calendar of a zone, and a shard's first check for every calendar: one writer
        step for all of them stalled the writer for half a second at the demo city's
        size)."""
        rolled = checked = 0
        due = self._roll_due
        self.roll_more = False
        for key, cal in self.calendars.items():
            if due.get(key, 0) > now:
                continue
            if checked >= limit:
                self.roll_more = True
                break
            checked += 1
            cmd = plan_roll(cal, now)
            due[key] = next_roll_at(cal, now)
            if cmd is None:
                continue
            cal.handle(cmd)
            self._collect(cal, cal.drain(), self._pending)
            rolled += 1
        return rolled

    def erase(
        self,
        now: int,
        patient_ref: str | None,
        ended_by: int | None,
        keys: Iterable[CalendarKey] | None = None,
    ) -> int:
        """Erase patient data in every calendar of this shard (or those of ``keys``):
        ``patient_ref``'s, or of the appointments ended by ``ended_by``; journaled with
        the next commit. Returns how many bookings lost theirs (the archive is
        :meth:`erase_archived`'s)."""
        erased = 0
        for pid, service in list(self.calendars) if keys is None else keys:
            cal = self.calendars.get((pid, service))
            if cal is None:
                continue
            cal.handle(ErasePatientData(pid, service, now, patient_ref, ended_by))
            if cal.outbox:
                events = cal.drain()
                erased += sum(
                    len(e.booking_ids) for e in events if isinstance(e, PatientDataErased)
                )
                self._collect(cal, events, self._pending)
        return erased

    def erase_waiting(self, now: int, patient_ref: str | None, ended_by: int | None) -> int:
        """Waitlist entries carry contact details and attestations too: ``patient_ref``'s
        leave the list; by retention, those whose time ran out by ``ended_by``. Journaled
        with the next commit; returns how many."""
        gone = [
            e.entry_id
            for e in self.waitlist.entries()
            if (patient_ref is not None and e.patient_ref == patient_ref)
            or (ended_by is not None and e.expires_at <= ended_by)
        ]
        for entry_id in gone:
            self.leave(entry_id, now)
        return len(gone)

    async def erase_notices(self, patient_ref: str | None, ended_by: int | None) -> int:
        """Drop the notices not delivered yet (the outbox and its dead letters) of
        ``patient_ref``, or about appointments ended by ``ended_by``. Returns how many."""
        dropped = 0
        for stream in (outbox.OUTBOX, outbox.DEAD):
            after = "-"
            while True:
                rows: Any = await self.redis.xrange(stream, min=after, max="+", count=500)
                doomed = []
                for entry_id, fields in rows:
                    n = outbox.open_notice(self.keyring, fields[b"n"])
                    cal = self.calendars.get((n.provider_id, n.service))
                    ends = n.start + (cal.slot_seconds if cal is not None else 0)
                    if (patient_ref is not None and n.patient_ref == patient_ref) or (
                        ended_by is not None and ends <= ended_by
                    ):
                        doomed.append(entry_id)
                if doomed:
                    dropped += await self.redis.xdel(stream, *doomed)
                if len(rows) < 500:
                    break
                after = "(" + rows[-1][0].decode()
        return dropped

    async def erase_archived(self, now: int, patient_ref: str | None, ended_by: int | None) -> int:
        """:meth:`erase` for the bookings of this shard's calendars in the archive: each
        one with patient data rewritten without it. Returns how many."""
        erased = 0
        calendars = list(self.calendars.items())
        pipe = self.redis.pipeline(transaction=False)
        for (pid, service), _ in calendars:
            pipe.exists(archive.archive_key(pid, service))
        found = await pipe.execute()  # one round trip, then only the archives there are
        for ((pid, service), cal), there in zip(calendars, found, strict=True):
            if not there:
                continue
            key = archive.archive_key(pid, service)
            rewritten: dict[str, bytes] = {}
            async for booking_id, raw in self.redis.hscan_iter(key, count=500):
                b = archive.open_booking(self.keyring, key, booking_id, raw)
                if not b.has_patient_data:
                    continue
                if patient_ref is not None and b.patient_ref != patient_ref:
                    continue
                if ended_by is not None and b.start + cal.slot_seconds > ended_by:
                    continue
                clean = msgspec.structs.replace(b, attested=None, contact=None, erased_at=now)
                rewritten[b.booking_id] = archive.seal_booking(self.keyring, pid, service, clean)
            if rewritten:  # one write per calendar, not one per booking
                await self.redis.hset(key, mapping=rewritten)  # type: ignore[arg-type]
                erased += len(rewritten)
        return erased

    def sweep(self, now: int) -> int:
        """Expire every due hold of every calendar; journaled with the next commit."""
        expired = 0
        for cal in self.calendars.values():
            if cal.holds:
                expired += cal.expire(now)
                if cal.outbox:
                    self._collect(cal, cal.drain(), self._pending)
        if len(self.waitlist):
            self.waitlist.expire(now)
            self._journal_waitlist()
        if len(self.timers):
            due = self.timers.due(now, self._calendar, self._offered_to)
            self._pending.notices.extend(due)
        return expired

    def _calendar(self, provider_id: str, service: str) -> tuple[Calendar, Provider] | None:
        cal = self.calendars.get((provider_id, service))
        return None if cal is None else (cal, self.providers[provider_id])

    def _offered_to(self, entry_id: str) -> tuple[str, Contact] | None:
        entry = self.waitlist.get(entry_id)
        if entry is None or entry.contact is None:
            return None
        return entry.patient_ref, entry.contact

    def _collect(
        self, cal: Calendar, events: list[Event], pending: _Pending, offers: bool = True
    ) -> None:
        if offers and self.offers.by_hold:
            ended = self.offers.observe(events)
            for entry_id, hold_id, how in ended:
                pending.ended.append((entry_id, hold_id, how))
                self.waitlist.end_offer(entry_id, how, events[-1].at)
        if len(self.waitlist):
            freed = freed_starts(cal, events)
            if freed:
                pending.freed.setdefault((cal.provider_id, cal.service), set()).update(freed)
        notices = notices_of(cal, self.providers[cal.provider_id], events, self._offered_to)
        if notices:
            pending.notices.extend(notices)
            timers = self.timers
            for n in notices:
                if n.kind == "offer.made" and n.hold_id is not None and n.expires_at:
                    timers.arm_offer(cal, n.hold_id, n.expires_at)
                elif n.booking_id is not None and n.kind != "booking.cancelled":
                    timers.arm_booking(cal, cal.bookings[n.booking_id])
        entries = pending.entries
        last = entries[-1] if entries else None
        if (
            isinstance(last, CalendarEvents)
            and last.provider_id == cal.provider_id
            and last.service == cal.service
        ):
            last.events.extend(events)
        else:
            entries.append(CalendarEvents(cal.provider_id, cal.service, events))
        pending.events += len(events)
        touched = pending.touched
        pid, service = cal.provider_id, cal.service
        for ev in events:
            if isinstance(ev, HoldPlaced | HoldReleased):
                touched[(pid, service, ev.start)] = None
            elif isinstance(ev, HoldConfirmed | BookingCancelled):
                touched[(pid, service, cal.bookings[ev.booking_id].start)] = None
            elif isinstance(ev, BookingRescheduled):
                touched[(pid, service, ev.old_start)] = None
                touched[(pid, service, ev.new_start)] = None
            elif isinstance(ev, PatientDataErased | AttendanceMarked):
                continue  # no place changed
            else:  # CapacityChanged, CalendarRolled: every slot may have changed
                pending.whole[(pid, service)] = None
                if isinstance(ev, CalendarRolled):
                    pending.archived.extend((pid, service, b) for b in ev.archived)

    # --- the waitlist ------------------------------------------------------------------

    def join(self, entry: WaitEntry, now: int) -> bool:
        """Add a waiting entry (journaled with the next commit) and offer it what is free
        now; ``False`` if it is here already."""
        if not self.waitlist.join(entry, now):
            return False
        self._journal_waitlist()
        for (pid, service), cal in self.calendars.items():
            site = self.providers[pid]
            if service == entry.service and entry.area.contains(site.lat, site.lng):
                starts = {s for s in open_starts(cal) if entry.earliest <= s < entry.latest}
                if starts:
                    self._pending.freed.setdefault((pid, service), set()).update(starts)
        return True

    def leave(self, entry_id: str, now: int) -> bool:
        """Take an entry off (its owner left), giving back an offer held for it."""
        left = self.waitlist.leave(entry_id, "cancelled", now)
        hold_id = self.offers.by_entry.get(entry_id)
        if hold_id is not None:
            self._release_offer(hold_id, now)
        self._journal_waitlist()
        return left or hold_id is not None

    def _journal_waitlist(self) -> None:
        events = self.waitlist.drain()
        if events:
            self._pending.entries.append(WaitlistEvents(events))
            self._pending.events += len(events)

    async def make_offers(self, now: int, rounds: int = 3) -> int:
        """Offer the places freed by the pending batch to the waiting entries, as holds
        in the same batch: each offer claimed in Redis first (one round trip), so an
        entry gets one offer at a time across shards. Returns how many were made.
        Raises Redis errors; then the caller must :meth:`fail_stop`."""
        pending = self._pending
        freed, pending.freed = pending.freed, {}
        made = 0
        if not freed or not len(self.waitlist):
            self._journal_waitlist()
            return made
        skip: set[str] = set()  # claimed elsewhere, or over
        for _ in range(rounds):
            planned: set[str] = set()
            busy = self._busy(skip, planned)
            plans = []
            for (pid, service), starts in freed.items():
                cal = self.calendars.get((pid, service))
                if cal is None:
                    continue
                site = self.providers[pid]
                for offer in plan_offers(self.waitlist, cal, site, starts, now, busy):
                    planned.add(offer.entry.entry_id)
                    plans.append((offer, routable_id(pid, service)))
            if not plans:
                break
            pipe = self.control.pipeline(transaction=False)  # claims: the deployment's
            expires = now + self.offer_seconds
            for offer, hold_id in plans:
                value = claims.offered_value(
                    self.name, hold_id, offer.provider_id, offer.service, offer.start, expires
                )
                await self._claim(
                    keys=[claims.claim_key(offer.entry.entry_id)], args=[value], client=pipe
                )
            answers = await pipe.execute()
            lost = False
            for (offer, hold_id), answer in zip(plans, answers, strict=True):
                entry_id = offer.entry.entry_id
                if answer is None:
                    cal = self.calendars[(offer.provider_id, offer.service)]
                    cal.handle(offer_hold(offer, hold_id, now, self.offer_seconds))
                    events = cal.drain()
                    self.offers.observe(events)  # the offer's hold: now a live offer
                    self._collect(cal, events, pending, offers=False)
                    made += 1
                    continue
                lost = True
                skip.add(entry_id)
                if claims.parse_claim(answer).state != "offered":
                    self.waitlist.leave(entry_id, "taken", now)  # over: off the list
            if not lost:
                break
        self._journal_waitlist()
        return made

    def _busy(self, skip: set[str], planned: set[str]) -> Callable[[str], bool]:
        by_entry = self.offers.by_entry

        def busy(entry_id: str) -> bool:
            return entry_id in by_entry or entry_id in skip or entry_id in planned

        return busy

    @property
    def has_pending(self) -> bool:
        return bool(self._pending.entries)

    # --- durability ------------------------------------------------------------------

    async def commit(self) -> str | None:
        """Make the pending batch durable (one MULTI/EXEC); return its journal id.

        Raises Redis errors; then the caller must :meth:`fail_stop`."""
        staged = self.stage()
        return None if staged is None else await self.finish(staged)

    def stage(self) -> Staged | None:
        """Take the pending batch and write its MULTI/EXEC, without sending it (``None``:
        nothing pending). What is applied from here on is the next batch's; send this
        one with :meth:`finish`, and stage the next only once it has finished (the
        journal's order is the order batches were applied in)."""
        self._journal_waitlist()  # the waitlist's events go with the batch that made them
        pending = self._pending
        if not pending.entries:
            return None
        self._pending = _Pending()
        slots = []
        for pid, service, start in pending.touched:
            if (pid, service) in pending.whole:
                continue  # read whole anyway
            cal = self.calendars.get((pid, service))
            if cal is not None:
                slots.append((pid, service, start, cal.remaining_at(start)))
        pipe = self.redis.pipeline(transaction=True)
        ring = self.keyring
        pipe.xadd(
            journal.journal_key(self.name),
            {"b": journal.seal_batch(JournalBatch(pending.entries), ring, self.name)},
        )
        for pid, service, booking in pending.archived:
            pipe.hset(
                archive.archive_key(pid, service),
                booking.booking_id,
                archive.seal_booking(ring, pid, service, booking),
            )
        for notice in pending.notices:  # a notice exists if and only if its event does
            pipe.xadd(outbox.OUTBOX, {"n": outbox.seal_notice(ring, notice)})
        pipe.xadd(
            availability.AVAILABILITY_STREAM,
            availability.encode_entry(self.name, slots, pending.whole),  # type: ignore[arg-type]
            maxlen=self.availability_maxlen,
            approximate=True,
        )
        return Staged(pending, pipe)

    async def finish(self, staged: Staged) -> str:
        """Send a :meth:`stage`'d batch; its journal id once it is durable.

        Raises Redis errors; then the caller must :meth:`fail_stop`."""
        pending, pipe = staged.pending, staged.pipe
        results = await pipe.execute()
        entry_id = results[0]
        self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        self.events_since_snapshot += pending.events
        if pending.ended:
            # The offers' ends end their entries' claims, after the commit (the claims are
            # the deployment's, the journal may be on another server): a crash between
            # the two is mended by the next recovery, which finds these ends in the
            # journal (_reconcile_claims). A failure here fails the shard stop like a
            # failed commit, so that recovery runs before anything else.
            async with self.control.pipeline(transaction=False) as finish:
                for ended_entry, hold_id, how in pending.ended:
                    await self._finish(
                        keys=[claims.claim_key(ended_entry)],
                        args=[hold_id, f"done:{how}", claims.DONE_TTL_SECONDS],
                        client=finish,
                    )
                await finish.execute()
        return self.last_id

    def snapshot_due(self) -> bool:
        return (
            self.snapshot_missed
            or self.events_since_snapshot >= self.snapshot_every_events
            or (
                self.events_since_snapshot > 0
                and time.monotonic() - self.last_snapshot_at >= self.snapshot_every_seconds
            )
        )

    def shard_snapshot(self) -> ShardSnapshot:
        """The state as of the last committed batch (call with nothing pending)."""
        if self.has_pending:
            raise RuntimeError("snapshot with uncommitted changes")
        return ShardSnapshot(
            last_id=self.last_id,
            providers=list(self.providers.values()),
            calendars=[c.snapshot() for c in self.calendars.values()],
            waitlist=self.waitlist.entries(),
            handed=list(self.handed.values()),
        )

    def take_snapshot(self) -> ShardSnapshot:
        """The state as of the last commit, to store with :meth:`store_snapshot`; the
        events toward the next snapshot count from here. Call it only between a commit
        and the next batch (the writer does): the copy is of arrays and of frozen
        records, so later batches do not change it."""
        snap = self.shard_snapshot()
        self.events_since_snapshot = 0
        self.snapshot_missed = False
        self.last_snapshot_at = time.monotonic()
        return snap

    async def store_snapshot(self, snap: ShardSnapshot, ring: Keyring | None) -> None:
        """Seal ``snap`` (off the event loop) and store it, trimming the journal through
        its last id, atomically. The writer may go on committing meanwhile: what it
        appends comes after ``snap.last_id`` and stays. One store at a time (an older
        snapshot stored after a newer one would lose what the newer one trimmed). Raises
        Redis errors; then the journal still has everything and the next is due."""
        try:
            blob = memoryview(await self._seal(snap, ring))
            staged, part = journal.staged_snapshot_key(self.name), journal.SNAPSHOT_PART
            # A part per command: the writer's commits go in between (module journal).
            await self.redis.set(staged, blob[:part])
            for i in range(part, len(blob), part):
                await self.redis.append(staged, blob[i : i + part])
            # Through last_id itself: every entry the snapshot covers goes (recovery
            # reads after last_id), so no entry sealed with an older key outlives it.
            keys = [staged, journal.snapshot_key(self.name), journal.journal_key(self.name)]
            done = await self.redis.eval(
                journal.PROMOTE_LUA, len(keys), *keys, len(blob), _after(snap.last_id)
            )
            if not done:
                raise RedisError(f"the staged snapshot of {self.name} was not whole")
        except BaseException:
            self.snapshot_missed = True
            raise

    async def _seal(self, snap: ShardSnapshot, ring: Keyring | None) -> bytes:
        """``journal.seal_snapshot(snap, ring, ...)``, made without holding the writer's
        loop: the calendars are encoded here a few at a time (a msgspec call holds the
        GIL, and a thread holding it between the loop's every syscall slowed each batch
        by up to the 5 ms switch interval per syscall), each megabyte is compressed in a
        thread (zlib lets the GIL go), and the seal of the whole is a thread's too."""
        z = zlib.compressobj(1)
        packed: list[bytes] = []
        parts: list[bytes] = []
        size = unyielded = 0
        for part in journal.snapshot_parts(snap):
            parts.append(part)
            size += len(part)
            unyielded += len(part)
            if size >= journal.SNAPSHOT_PART:
                packed.append(await asyncio.to_thread(z.compress, b"".join(parts)))
                parts, size, unyielded = [], 0, 0
            elif unyielded >= _ENCODE_STRETCH:
                # A megabyte of calendars is 5-40 ms of encoding on a busy machine: the
                # writer gets the loop every 64 KiB instead (py-spy: at 1 MiB between
                # turns a snapshot was the p99 of every request for two seconds).
                await asyncio.sleep(0)
                unyielded = 0
        packed.append(await asyncio.to_thread(lambda: z.compress(b"".join(parts)) + z.flush()))
        return await asyncio.to_thread(
            lambda: journal.seal_compressed(b"".join(packed), ring, self.name)
        )

    async def write_snapshot(self) -> None:
        """Store a snapshot now and trim the journal up to it (nothing else running)."""
        await self.store_snapshot(self.take_snapshot(), self.keyring)
