"""The booking service: every verb of the v1 API, in one place.

Both ways a request reaches the gateway call this: the FastAPI routes of
:mod:`gateway.routes` (which document the API and answer what the fast path does not
take) and the fast path of :mod:`gateway.fast`. Requests arrive as the validated models
of :mod:`gateway.schemas`; answers are JSON-ready dicts in the shape of the response
models; failures are the domain errors of :mod:`engine.errors`, which
:func:`gateway.problems.problem_of` turns into answers.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
from datetime import date
from typing import Any

import h3
import numpy as np

from actors.api import Hexbook, calendar_of, routable_id, token_digest
from actors.policy import PolicyCache
from actors.series import SeriesBook, SeriesNotFound
from actors.shard import check
from engine.eligibility import AgeBand, Attestation, Residence, Rule, rule_name
from engine.errors import (
    BookingNotFound,
    HexbookError,
    HoldNotFound,
    InvalidRequest,
    NotFound,
    SlotUnavailable,
)
from engine.provider import Provider
from engine.records import (
    Booking,
    CancelBooking,
    ConfirmHold,
    Contact,
    Hold,
    MarkAttendance,
    PlaceHold,
    ReleaseHold,
    RescheduleBooking,
)
from engine.schedule import Blocked, WeeklyTemplate, Window
from engine.series import (
    SeriesRecord,
    SeriesTemplate,
    dose_window,
    first_doses,
    pick_slot,
    plan_move,
)
from gateway.auth import Forbidden, Principal
from gateway.idempotency import Idempotency
from gateway.index import AvailabilityIndex
from gateway.observe import Metrics
from gateway.room import WaitingRooms
from gateway.router import ShardRouter
from gateway.schemas import (
    AttendanceIn,
    AttestationIn,
    BookingRequest,
    ContactIn,
    HoldRequest,
    ProviderIn,
    RescheduleRequest,
    RuleIn,
    SearchQuery,
    SecondDoseIn,
    SeriesBookingRequest,
    SeriesHoldRequest,
    SeriesRescheduleRequest,
    SeriesTemplateIn,
    SlotsQuery,
)
from gateway.timefmt import format_local

__all__ = ["BookingService", "NoSuchBooking", "SlotStarted"]

UNSERVED_RESOLUTION = 7  # the areas of the dashboard's map of searches


class SlotStarted(SlotUnavailable):
    """A hold or a move to a slot that has already started (409 slot_unavailable)."""

    def __init__(self) -> None:
        HexbookError.__init__(self, "that slot has already started; choose a later one")
        self.free = 0


class NoSuchBooking(BookingNotFound):
    """No booking for this id *and token*: the same answer whether the id is unknown or
    the token wrong, so a guesser learns nothing about which ids exist."""

    def __init__(self) -> None:
        HexbookError.__init__(
            self,
            "no booking with this id for this token; send the booking_id and the "
            "booking_token (as X-Booking-Token) of the answer that created it",
        )


def attestation_of(a: AttestationIn | None) -> Attestation | None:
    """The engine's record of what was attested (dates checked as dates)."""
    if a is None:
        return None
    if a.birth_date is not None:
        try:
            date.fromisoformat(a.birth_date)
        except ValueError:
            raise InvalidRequest(f"birth_date {a.birth_date!r} is not a date") from None
    return Attestation(a.birth_date, a.postal_code, a.cell, tuple(a.groups))


def rule_of(service: str, provider_id: str | None, r: RuleIn) -> Rule:
    residence = None
    if r.residence is not None:
        x = r.residence
        residence = Residence(tuple(x.postal_codes), tuple(x.cells), x.lat, x.lng, x.radius_km)
    return Rule(
        service=service,
        provider_id=provider_id,
        ages=tuple(AgeBand(b.min_years, b.max_years) for b in r.ages),
        reference_date=r.reference_date,
        residence=residence,
        groups=tuple(r.groups),
    )


def rule_out(rule: Rule, refused: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    res = rule.residence
    return {
        "rule": rule_name(rule),
        "service": rule.service,
        "provider_id": rule.provider_id,
        "version": rule.version,
        "published_at": rule.published_at,
        "ages": [{"min_years": b.min_years, "max_years": b.max_years} for b in rule.ages],
        "reference_date": rule.reference_date,
        "residence": None
        if res is None
        else {
            "postal_codes": list(res.postal_codes),
            "cells": list(res.cells),
            "lat": res.lat,
            "lng": res.lng,
            "radius_km": res.radius_km,
        },
        "groups": list(rule.groups),
        "would_refuse": refused or [],
    }


def series_out(
    rec: SeriesRecord, providers: dict[str, Provider], token: str | None = None
) -> dict[str, Any]:
    doses = []
    for i, d in enumerate(rec.doses):
        p = providers.get(d.provider_id)
        doses.append(
            {
                "dose": i + 1,
                "provider_id": d.provider_id,
                "service": d.service,
                "start": format_local(d.start, p.timezone if p else "UTC"),
                "hold_id": d.hold_id,
                "booking_id": d.booking_id,
                "status": d.state,
            }
        )
    return {
        "series_id": rec.series_id,
        "state": rec.state,
        "reason": rec.reason,
        "booking_token": token,
        "doses": doses,
    }


def provider_out(p: Provider) -> dict[str, Any]:
    """A provider as the ProviderOut of the contract."""
    return {
        "provider_id": p.provider_id,
        "name": p.name,
        "lat": p.lat,
        "lng": p.lng,
        "timezone": p.timezone,
        "services": list(p.services),
        "languages": list(p.languages),
        "accessibility": list(p.accessibility),
        "insurance": list(p.insurance),
    }


def hold_out(h: Hold, provider: Provider, service: str) -> dict[str, Any]:
    """A hold as the HoldOut of the contract."""
    return {
        "hold_id": h.hold_id,
        "provider_id": provider.provider_id,
        "service": service,
        "start": format_local(h.start, provider.timezone),
        "party_size": h.party_size,
        "expires_at": format_local(h.expires_at, provider.timezone),
    }


def booking_out(
    b: Booking, provider: Provider, service: str, token: str | None = None
) -> dict[str, Any]:
    """A booking as the BookingOut of the contract."""
    return {
        "booking_id": b.booking_id,
        "booking_token": token,
        "provider_id": provider.provider_id,
        "service": service,
        "start": format_local(b.start, provider.timezone),
        "party_size": b.party_size,
        "status": b.status,
        "patient": patient_out(b),
        "attendance": b.attendance,
    }


def patient_out(b: Booking) -> dict[str, Any]:
    """The booking's patient: the reference, and the contact details while kept."""
    if b.contact is None:
        return {"reference": b.patient_ref}
    return {"reference": b.patient_ref, "contact": contact_out(b.contact)}


def contact_of(c: ContactIn | None) -> Contact | None:
    """The engine's record of what the patient gave to be reached by."""
    if c is None or (c.email is None and c.phone is None):
        return None
    return Contact(c.email, c.phone, c.language)


def contact_out(c: Contact) -> dict[str, str | None]:
    return {"email": c.email, "phone": c.phone, "language": c.language}


class BookingService:
    """Search, slots, holds, bookings and provider schedules, bound once at start-up."""

    def __init__(
        self,
        hexbook: Hexbook,
        router: ShardRouter,
        index: AvailabilityIndex,
        idempotency: Idempotency,
        metrics: Metrics,
        hold_ttl_seconds: int,
        policies: PolicyCache,
        series: SeriesBook,
        rooms: WaitingRooms,
    ) -> None:
        self.rooms = rooms
        self.policies = policies
        self.series = series
        self.hexbook = hexbook
        self.router = router
        self.index = index
        self.idempotency = idempotency
        self.metrics = metrics
        self.hold_ttl_seconds = hold_ttl_seconds
        self.providers = index.providers  # provider records, refreshed by PUT and imports
        # Searches that found nothing, by area (H3 cell) and service (the dashboard's map).
        self.unserved: collections.Counter[tuple[str, str]] = collections.Counter()

    def _now(self) -> int:
        return self.hexbook.clock.seconds()  # the stack's clock (a test can move it)

    def _not_past(self, start: int) -> int:
        if start <= self._now():
            raise SlotStarted()
        return start

    # --- reading -------------------------------------------------------------------

    async def provider(self, provider_id: str) -> Provider:
        """A provider record. Records change only through PUT and imports (which refresh
        this cache), so the booking path pays no shard call for one."""
        provider: Provider | None = self.providers.get(provider_id)
        if provider is None:
            provider = check(await self.router.call(provider_id, "provider", provider_id))
            self.providers[provider_id] = provider
        return provider

    def search(self, q: SearchQuery) -> dict[str, Any]:
        """Providers with free places near a point, from the index, with its freshness."""
        matches = self.index.search(
            q.lat,
            q.lng,
            q.radius_km,
            q.service,
            self._now() if q.from_ is None else q.from_,
            q.to,
            limit=q.limit,
            party_size=q.party_size,
            languages=q.language,
            accessibility=q.accessibility,
            insurance=q.insurance,
            order=q.order,
        )
        if not matches:
            self._unserved(q.lat, q.lng, q.service)
        return {
            "results": [
                {
                    "provider_id": m.provider.provider_id,
                    "name": m.provider.name,
                    "lat": m.provider.lat,
                    "lng": m.provider.lng,
                    "distance_km": round(m.distance_km, 3),
                    "service": m.service,
                    "next_slots": [
                        {"start": format_local(start, m.provider.timezone), "remaining": free}
                        for start, free in m.slots
                    ],
                }
                for m in matches
            ],
            "index": self.index.freshness(),
        }

    async def search_series(self, q: SearchQuery) -> dict[str, Any]:
        """Sites whose slots can start a series: each first slot with the earliest dose 2
        in its window, at the same site or (templates that allow it) the nearest other."""
        template = await self.policies.template(q.service)
        if template is None:
            raise InvalidRequest(f"service {q.service!r} has no series template")
        t_from = self._now() if q.from_ is None else q.from_
        near = self.index.search(
            q.lat, q.lng, q.radius_km, q.service, t_from, None, limit=100,
            party_size=q.party_size, languages=q.language, accessibility=q.accessibility,
            insurance=q.insurance, order=q.order,
        )  # fmt: skip
        grids = {}
        for m in near:
            grid = self.index.free_of(m.provider.provider_id, q.service)
            if grid is not None:
                grids[m.provider.provider_id] = grid
        results = []
        for m in near:
            pid = m.provider.provider_id
            if pid not in grids:
                continue
            seconds = [(pid, grids[pid])]
            if not template.same_provider:
                seconds += [(o, g) for o, g in grids.items() if o != pid]
            found = first_doses(grids[pid], seconds, template, q.party_size, t_from, q.to)
            if not found:
                continue
            start, step, free = grids[pid]
            results.append(
                {
                    "provider_id": pid,
                    "name": m.provider.name,
                    "lat": m.provider.lat,
                    "lng": m.provider.lng,
                    "distance_km": round(m.distance_km, 3),
                    "service": q.service,
                    "next_slots": [
                        {
                            "start": format_local(first, m.provider.timezone),
                            "remaining": int(free[(first - start) // step]),
                            "second_dose": {
                                "provider_id": other,
                                "start": format_local(
                                    then,
                                    self.providers[other].timezone
                                    if other in self.providers
                                    else m.provider.timezone,
                                ),
                            },
                        }
                        for first, other, then in found
                    ],
                }
            )
            if len(results) >= q.limit:
                break
        return {"results": results, "index": self.index.freshness()}

    async def slots(self, provider_id: str, q: SlotsQuery) -> dict[str, Any]:
        """The slot grid with remaining places (authoritative, from the shard)."""
        p = await self.provider(provider_id)
        grid = check(await self.router.call(provider_id, "slots", provider_id, q.service))
        out = []
        step = grid["slot_seconds"]
        for i, cap in enumerate(grid["capacity"]):
            start = grid["start"] + i * step
            if not cap or (q.from_ is not None and start < q.from_) or (q.to and start >= q.to):
                continue
            remaining = max(cap - grid["booked"][i] - grid["held"][i], 0)
            out.append(
                {"start": format_local(start, p.timezone), "capacity": cap, "remaining": remaining}
            )
        return {
            "provider_id": provider_id,
            "service": q.service,
            "slot_minutes": step // 60,
            "slots": out,
        }

    async def hold_of(self, hold_id: str) -> dict[str, Any]:
        """A live hold, as the HoldOut of the contract (the patient pages show it)."""
        try:
            provider_id, service = calendar_of(hold_id)
        except InvalidRequest:
            raise HoldNotFound(hold_id) from None
        hold = check(await self.router.call(provider_id, "hold", provider_id, service, hold_id))
        return hold_out(hold, await self.provider(provider_id), service)

    def _unserved(self, lat: float, lng: float, service: str) -> None:
        """Count a search that found nothing, by its area (the dashboard's map)."""
        if len(self.unserved) >= 50_000:  # searches from all over the world: keep it flat
            self.unserved.clear()
        self.unserved[(h3.latlng_to_cell(lat, lng, UNSERVED_RESOLUTION), service)] += 1

    async def booking(
        self, caller: Principal, booking_id: str, token: str | None
    ) -> dict[str, Any]:
        """A booking, for its token (or an operator)."""
        booking, p, service = await self._authorised(caller, booking_id, token)
        return booking_out(booking, p, service)

    # --- changing ------------------------------------------------------------------

    async def put_provider(
        self, caller: Principal, provider_id: str, body: ProviderIn
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace a provider and its schedule (its operator or provider-admin);
        the provider as ProviderOut, and whether it is new."""
        if caller.key is None or not caller.key.may_admin(provider_id):
            raise Forbidden(f"this key may not change provider {provider_id!r}")
        provider = Provider(
            provider_id=provider_id,
            name=body.name,
            lat=body.lat,
            lng=body.lng,
            timezone=body.timezone,
            services=tuple(body.services),
            languages=tuple(body.languages),
            accessibility=tuple(body.accessibility),
            insurance=tuple(body.insurance),
        )
        template = WeeklyTemplate(
            days=tuple(
                (d, tuple(Window(w.opens, w.closes, w.capacity) for w in ws))
                for d, ws in body.schedule.days.items()
            ),
            closed_dates=tuple(body.schedule.closed_dates),
            blocked=tuple(Blocked(b.start, b.end) for b in body.schedule.blocked),
        )
        hb = self.hexbook

        def provision() -> bool:
            new = not hb.directory.has_provider(provider_id)
            hb.provision(
                provider,
                template,
                body.first_day,
                body.days,
                body.slot_minutes,
                horizon_days=body.horizon_days,
            )
            return new

        created = await asyncio.to_thread(provision)
        self.providers[provider_id] = provider
        return provider_out(provider), created

    async def hold(self, caller: Principal, req: HoldRequest, key: str | None) -> dict[str, Any]:
        """Place a hold: the HoldOut of the contract."""
        at = self._not_past(req.start)
        provider = self.providers.get(req.provider_id) or await self.provider(req.provider_id)
        scoped = await self.idempotency.scope(
            caller, key, "hold", req.provider_id, req.service, at, req.party_size
        )
        cmd = PlaceHold(
            req.provider_id,
            req.service,
            scoped.command,
            self._now(),
            routable_id(req.provider_id, req.service),
            at,
            req.party_size,
            self.hold_ttl_seconds,
            attestation_of(req.attestation),
            await self.policies.rule(req.service, req.provider_id),
        )
        async with self.rooms.admission(caller, provider, req.service, req.admission, scoped.key):
            hold = check(await self.router.submit(cmd))
        self.metrics.holds.inc()
        return hold_out(hold, provider, req.service)

    async def book(self, caller: Principal, req: BookingRequest, key: str | None) -> dict[str, Any]:
        """Confirm a hold: the BookingOut of the contract, with its token. A repeat under
        the same Idempotency-Key answers the same, token included."""
        provider_id, service = calendar_of(req.hold_id)
        provider = self.providers.get(provider_id) or await self.provider(provider_id)
        scoped = await self.idempotency.scope(
            caller, key, "book", req.hold_id, req.patient.reference
        )
        token = self.idempotency.token(scoped)
        cmd = ConfirmHold(
            provider_id,
            service,
            scoped.command,
            self._now(),
            req.hold_id,
            routable_id(provider_id, service),
            token_digest(token),
            req.patient.reference,
            await self.policies.rule(service, provider_id),  # the version in force now
            None,
            contact_of(req.patient.contact),
        )
        booking = check(await self.router.submit(cmd))
        self.metrics.bookings.inc()
        shown = token if hmac.compare_digest(booking.token_digest, token_digest(token)) else None
        return booking_out(booking, provider, service, shown)

    async def release(self, caller: Principal, hold_id: str, key: str | None) -> None:
        """Release a hold (its capacity goes back)."""
        provider_id, service = calendar_of(hold_id)
        scoped = await self.idempotency.scope(caller, key, "release", hold_id)
        cmd = ReleaseHold(provider_id, service, scoped.key, self._now(), hold_id)
        check(await self.router.submit(cmd))

    async def cancel(
        self, caller: Principal, booking_id: str, token: str | None, key: str | None
    ) -> None:
        """Cancel a booking (its token, or an operator); a dose of a series cancels the
        series (every dose)."""
        booking, p, service = await self._authorised(caller, booking_id, token)
        if booking.series_id is not None:
            await self.series.cancel(booking.series_id)
            self.metrics.cancellations.inc()
            return
        scoped = await self.idempotency.scope(caller, key, "cancel", booking_id)
        cmd = CancelBooking(p.provider_id, service, scoped.key, self._now(), booking_id)
        check(await self.router.submit(cmd))
        self.metrics.cancellations.inc()

    async def cancel_at_site(self, provider_id: str, booking_id: str) -> None:
        """A site's own cancellation of one of its bookings (the site admin's roster);
        the caller was checked to manage ``provider_id``."""
        try:
            owner, service = calendar_of(booking_id)
        except InvalidRequest:
            raise BookingNotFound(booking_id) from None
        if owner != provider_id:
            raise BookingNotFound(booking_id)
        booking = check(await self.router.call(owner, "booking", owner, service, booking_id))
        if booking.series_id is not None:
            await self.series.cancel(booking.series_id)
        else:
            cmd = CancelBooking(owner, service, None, self._now(), booking_id)
            check(await self.router.submit(cmd))
        self.metrics.cancellations.inc()

    async def mark_attendance(
        self, caller: Principal, booking_id: str, req: AttendanceIn, key: str | None
    ) -> dict[str, Any]:
        """Mark whether a booking's patient came (its site's provider-admin, or an
        operator): the BookingOut with its ``attendance``."""
        try:
            provider_id, service = calendar_of(booking_id)
        except InvalidRequest:
            raise BookingNotFound(booking_id) from None
        if caller.key is None or not caller.key.may_admin(provider_id):
            raise Forbidden(f"this key may not mark the bookings of provider {provider_id!r}")
        provider = await self.provider(provider_id)
        scoped = await self.idempotency.scope(caller, key, "attendance", booking_id, req.attendance)
        cmd = MarkAttendance(
            provider_id, service, scoped.key, self._now(), booking_id, req.attendance
        )
        return booking_out(check(await self.router.submit(cmd)), provider, service)

    async def reschedule(
        self,
        caller: Principal,
        booking_id: str,
        token: str | None,
        req: RescheduleRequest,
        key: str | None,
    ) -> dict[str, Any]:
        """Move a booking; the old place is freed only when the new one is booked. To
        another calendar the booking gets a new id and keeps its token."""
        booking, p, service = await self._authorised(caller, booking_id, token)
        if booking.series_id is not None:
            return await self._reschedule_dose(caller, booking, p.provider_id, service, req)
        new_start = self._not_past(req.start)
        target = await self.provider(req.provider_id)
        scoped = await self.idempotency.scope(
            caller, key, "reschedule", booking_id, req.provider_id, req.service, new_start
        )
        if (req.provider_id, req.service) == (p.provider_id, service):
            cmd = RescheduleBooking(
                p.provider_id, service, scoped.key, self._now(), booking_id, new_start
            )
            return booking_out(check(await self.router.submit(cmd)), p, service)
        moved = await asyncio.to_thread(
            self.hexbook.reschedule,
            booking_id,
            p.provider_id,
            service,
            new_start,
            new_provider_id=req.provider_id,
            new_service=req.service,
            key=scoped.key,
        )
        return booking_out(moved, target, req.service, token)

    # --- eligibility rules -------------------------------------------------------------

    async def publish_rule(
        self, service: str, provider_id: str | None, body: RuleIn
    ) -> dict[str, Any]:
        """Publish the next version of a rule; list (never cancel) the active bookings
        it would refuse."""
        if provider_id is not None:
            await self.provider(provider_id)
        rule = await self.policies.store.publish(
            rule_of(service, provider_id, body), now=self._now()
        )
        self.policies.forget()
        refused = []
        for shard in self.hexbook.directory.shards:
            for pid, booking_id, reasons in check(
                await self.router.call_shard(shard, "refused_by", rule, self._now())
            ):
                refused.append({"provider_id": pid, "booking_id": booking_id,
                                "reasons": list(reasons)})  # fmt: skip
        return rule_out(rule, refused)

    async def rules(self, service: str, provider_id: str | None) -> list[dict[str, Any]]:
        name = service if provider_id is None else f"{service}@{provider_id}"
        return [rule_out(r) for r in await self.policies.store.history(name)]

    # --- dose series ---------------------------------------------------------------------

    async def put_series_template(self, service: str, body: SeriesTemplateIn) -> dict[str, Any]:
        t = SeriesTemplate(service, body.min_days, body.max_days, body.same_provider)
        await self.policies.store.set_template(t)
        self.policies.forget()
        return {"service": service, **body.model_dump()}

    async def series_hold(
        self, caller: Principal, req: SeriesHoldRequest, key: str | None
    ) -> dict[str, Any]:
        """Hold dose 1 and a dose-2 slot in the template's window, together or not at all."""
        template = await self.policies.template(req.service)
        if template is None:
            raise InvalidRequest(
                f"service {req.service!r} has no series template; an operator sets one with "
                f"PUT /v1/series-templates/{req.service}"
            )
        at = self._not_past(req.start)
        first = await self.provider(req.provider_id)
        second = req.second or SecondDoseIn()
        second_pid = second.provider_id or req.provider_id
        if template.same_provider and second_pid != req.provider_id:
            raise InvalidRequest(f"series of {req.service!r} keep both doses at one provider")
        await self.provider(second_pid)
        lo, hi = dose_window(template, at)
        if second.start is not None and not lo <= second.start <= hi:
            raise InvalidRequest(
                f"dose 2 must start {template.min_days} to {template.max_days} days after dose 1"
            )
        scoped = await self.idempotency.scope(
            caller,
            key,
            "series",
            req.provider_id,
            req.service,
            at,
            second_pid,
            second.start or 0,
            req.party_size,
        )
        digest = hashlib.blake2b(scoped.key.encode(), digest_size=16).digest()
        series_id = "series." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

        async def plan() -> list[tuple[str, str, int, str, str]]:
            then = second.start
            if then is None:
                starts, free = await self._free_places(second_pid, req.service)
                then = pick_slot(starts, free, (lo, hi), req.party_size)
                if then is None:
                    raise SlotUnavailable(second_pid, req.service, lo, req.party_size, 0)
            return [
                (pid, req.service, start, routable_id(pid, req.service),
                 routable_id(pid, req.service))
                for pid, start in ((req.provider_id, at), (second_pid, then))
            ]  # fmt: skip

        async with self.rooms.admission(caller, first, req.service, req.admission, scoped.key):
            rec = await self.series.hold(
                series_id,
                plan,
                req.party_size,
                self.hold_ttl_seconds,
                attestation_of(req.attestation),
                self.policies.rule_for,
            )
        self.metrics.holds.inc(len(rec.doses))
        return series_out(rec, {first.provider_id: first, **self.providers})

    async def _free_places(self, provider_id: str, service: str) -> tuple[np.ndarray, np.ndarray]:
        """Slot starts and free places of a calendar to pick a dose 2 from: the search
        index's (what a patient is shown; the hold then decides), or the shard's for a
        calendar the index does not cover."""
        known = self.index.free_of(provider_id, service)
        if known is not None:
            start, step, free = known
            return start + np.arange(free.size, dtype=np.int64) * step, free
        grid = check(await self.router.call(provider_id, "slots", provider_id, service))
        starts = (
            grid["start"] + np.arange(len(grid["capacity"]), dtype=np.int64) * grid["slot_seconds"]
        )
        taken = np.asarray(grid["booked"], dtype=np.int32) + np.asarray(
            grid["held"], dtype=np.int32
        )
        return starts, np.asarray(grid["capacity"], dtype=np.int32) - taken

    async def series_book(
        self, caller: Principal, req: SeriesBookingRequest, key: str | None
    ) -> dict[str, Any]:
        """Confirm every dose or none; the bookings share one token."""
        scoped = await self.idempotency.scope(
            caller, key, "series-book", req.series_id, req.patient.reference
        )
        token = self.idempotency.token(scoped)
        rec = await self.series.confirm(
            req.series_id,
            req.patient.reference,
            token_digest(token),
            self.policies.rule_for,
            contact_of(req.patient.contact),
        )
        shown = token if hmac.compare_digest(rec.token_digest, token_digest(token)) else None
        self.metrics.bookings.inc(len(rec.doses))
        return series_out(rec, self.providers, shown)

    async def series_read(
        self, caller: Principal, series_id: str, token: str | None
    ) -> SeriesRecord:
        rec = await self.series.get(series_id)
        if caller.role == "operator" and token is None:
            return rec
        if token is None or not hmac.compare_digest(rec.token_digest, token_digest(token)):
            raise SeriesNotFound(series_id)
        return rec

    async def series_reschedule(
        self, caller: Principal, series_id: str, token: str | None, req: SeriesRescheduleRequest
    ) -> dict[str, Any]:
        """Move dose ``req.dose`` within its calendar; the doses after it stay if they are
        still in their window, else move to the nearest slot that keeps their interval.
        Every dose stays booked; a move that cannot be done whole is undone."""
        rec = await self.series_read(caller, series_id, token)
        return await self._move_series(rec, req.dose - 1, req.start)

    async def _move_series(self, rec: SeriesRecord, k: int, start: int) -> dict[str, Any]:
        if k >= len(rec.doses):
            raise InvalidRequest(f"series {rec.series_id!r} has {len(rec.doses)} doses")
        new_start = self._not_past(start)
        template = await self.policies.template(rec.doses[0].service)
        if template is None:
            raise InvalidRequest(f"service {rec.doses[0].service!r} has no series template")
        grids = {}
        for d in rec.doses[k + 1 :]:
            grid = check(await self.router.call(d.provider_id, "slots", d.provider_id, d.service))
            starts = grid["start"] + np.arange(len(grid["capacity"])) * grid["slot_seconds"]
            free = (
                np.asarray(grid["capacity"], dtype=np.int32)
                - np.asarray(grid["booked"], dtype=np.int32)
                - np.asarray(grid["held"], dtype=np.int32)
            )
            grids[d.provider_id, d.service] = (starts, free)

        def free_for(i: int, window: tuple[int, int], prefer: int) -> int | None:
            d = rec.doses[i]
            starts, free = grids[d.provider_id, d.service]
            return pick_slot(starts, free, window, d.party_size, prefer)

        moved = await self.series.move(
            rec.series_id, lambda now: plan_move(now, template, k, new_start, free_for)
        )
        return series_out(moved, self.providers)

    async def series_cancel(self, caller: Principal, series_id: str, token: str | None) -> None:
        await self.series_read(caller, series_id, token)
        await self.series.cancel(series_id)
        self.metrics.cancellations.inc()

    async def _reschedule_dose(
        self,
        caller: Principal,
        booking: Booking,
        provider_id: str,
        service: str,
        req: RescheduleRequest,
    ) -> dict[str, Any]:
        """A dose of a series moves as part of its series, within its calendar."""
        if (req.provider_id, req.service) != (provider_id, service):
            raise InvalidRequest(
                "a dose of a series moves within its site and service; to change sites, "
                "cancel the series and hold a new one"
            )
        assert booking.series_id is not None
        rec = await self.series.get(booking.series_id)
        dose = next(i for i, d in enumerate(rec.doses) if d.booking_id == booking.booking_id)
        await self._move_series(rec, dose, req.start)
        moved = check(
            await self.router.call(provider_id, "booking", provider_id, service, booking.booking_id)
        )
        return booking_out(moved, await self.provider(provider_id), service)

    async def _authorised(
        self, caller: Principal, booking_id: str, token: str | None
    ) -> tuple[Booking, Provider, str]:
        try:
            provider_id, service = calendar_of(booking_id)
            booking = check(
                await self.router.call(provider_id, "booking", provider_id, service, booking_id)
            )
            provider = await self.provider(provider_id)
        except (NotFound, InvalidRequest):
            raise NoSuchBooking() from None
        if caller.role == "operator" and token is None:
            return booking, provider, service  # operators may read and cancel any booking
        if token is None or not hmac.compare_digest(booking.token_digest, token_digest(token)):
            raise NoSuchBooking()
        return booking, provider, service
