"""``/v1/waitlist``'s work: join every shard's waitlist, read an entry and its offer,
leave, and accept the offer with one call.

An entry is given to every shard (a place may free up anywhere in its area) and kept,
sealed, under its own key for its owner to read; its claim (:mod:`actors.waitlist`)
says where it stands. Ids and tokens follow the bookings' pattern: the token is shown
once, only its SHA-256 is kept, and a join repeated under its Idempotency-Key derives
the same id and token (:class:`gateway.idempotency.Idempotency`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from actors import waitlist as claims
from actors.api import routable_id, token_digest
from actors.policy import PolicyCache
from actors.sealing import Keyring
from actors.shard import check
from engine.errors import AlreadyWaiting, EntryNotFound, InvalidRequest, NoOffer
from engine.provider import Provider
from engine.records import ConfirmHold
from engine.waitlist import WaitArea, WaitEntry, validate_entry
from gateway.auth import Principal
from gateway.idempotency import Idempotency
from gateway.router import ShardRouter
from gateway.schemas import WaitlistIn
from gateway.service import attestation_of, booking_out, contact_of, contact_out
from gateway.timefmt import format_local

__all__ = ["Waitlists", "entry_out"]

MAX_WAIT_SECONDS = 90 * 86_400  # an entry waits at most this long


def _entry_id(token: str) -> str:
    digest = hashlib.sha256(b"waitlist-entry:" + token.encode()).digest()[:16]
    return "wl_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def entry_out(
    e: WaitEntry,
    claim: claims.Claim,
    now: int,
    providers: dict[str, Provider],
    token: str | None = None,
) -> dict[str, Any]:
    """An entry as the WaitlistOut of the contract."""
    state = claim.state
    if state == "waiting" and e.expires_at <= now:
        state = "expired"
    offer = None
    if state == "offered" and claim.provider_id is not None:
        site = providers.get(claim.provider_id)
        zone = site.timezone if site is not None else "UTC"
        offer = {
            "hold_id": claim.hold_id,
            "provider_id": claim.provider_id,
            "service": claim.service,
            "start": format_local(claim.start or 0, zone),
            "expires_at": format_local(claim.expires_at or 0, zone),
        }
    area: dict[str, Any] = {"cells": list(e.area.cells)}
    if e.area.radius_km is not None:
        area |= {"lat": e.area.lat, "lng": e.area.lng, "radius_km": e.area.radius_km}
    patient: dict[str, Any] = {"reference": e.patient_ref}
    if e.contact is not None:
        patient["contact"] = contact_out(e.contact)
    return {
        "entry_id": e.entry_id,
        "waitlist_token": token,
        "status": state,
        "service": e.service,
        "area": area,
        "earliest": format_local(e.earliest, "UTC"),
        "latest": format_local(e.latest, "UTC"),
        "party_size": e.party_size,
        "joined_at": format_local(e.joined_at, "UTC"),
        "expires_at": format_local(e.expires_at, "UTC"),
        "patient": patient,
        "offer": offer,
    }


class Waitlists:
    """Join, read, leave and accept, for the routes."""

    def __init__(
        self,
        redis: aioredis.Redis,
        router: ShardRouter,
        shards: Callable[[], list[str]],
        now: Callable[[], int],
        idempotency: Idempotency,
        policies: PolicyCache,
        providers: dict[str, Provider],
        site: Callable[[str], Awaitable[Provider]],
        keyring: Keyring | None,
    ) -> None:
        self.redis = redis
        self.router = router
        self.shards = shards
        self.now = now
        self.idempotency = idempotency
        self.policies = policies
        self.providers = providers  # what is cached, for the answers' local times
        self.site = site  # a provider record, cached or from its shard
        self.keyring = keyring
        self._leave = redis.register_script(claims.LEAVE)
        self._patient = redis.register_script(claims.PATIENT)

    async def join(self, caller: Principal, req: WaitlistIn, key: str | None) -> dict[str, Any]:
        """Put a patient on the waitlist (every shard's); 201 with the token."""
        area = req.area
        scoped = await self.idempotency.scope(
            caller,
            key,
            "waitlist",
            req.service,
            ",".join(area.cells),
            f"{area.lat}/{area.lng}/{area.radius_km}",
            req.earliest,
            req.latest,
            req.party_size,
            req.patient.reference,
        )
        token = self.idempotency.token(scoped)
        now = self.now()
        expires = min(req.latest, req.expires_at or req.latest, now + MAX_WAIT_SECONDS)
        entry = WaitEntry(
            _entry_id(token),
            req.service,
            WaitArea(tuple(area.cells), area.lat, area.lng, area.radius_km),
            req.earliest,
            req.latest,
            req.party_size,
            now,
            expires,
            req.patient.reference,
            token_digest(token),
            attestation_of(req.attestation),
            contact_of(req.patient.contact),
        )
        validate_entry(entry)
        if expires <= now:
            raise InvalidRequest("the waitlist window (or expires_at) is over already")
        stored = claims.seal_entry(self.keyring, entry)
        keep = expires - now + claims.DONE_TTL_SECONDS
        await self._one_per_patient(entry, expires - now)
        key_ = claims.entry_key(entry.entry_id)
        if not await self.redis.set(key_, stored, nx=True, ex=keep):
            entry = await self._entry(entry.entry_id)  # a repeat: the entry as it joined
        try:
            await asyncio.gather(
                *(self.router.call_shard(s, "waitlist_join", entry) for s in self.shards())
            )
        except Exception:
            if not scoped.repeatable:  # no key to finish it with: end it, free the patient
                await self._end(entry)
            raise
        claim = claims.parse_claim(await self.redis.get(claims.claim_key(entry.entry_id)))
        return entry_out(entry, claim, self.now(), self.providers, token)

    async def _one_per_patient(self, entry: WaitEntry, ttl: int) -> None:
        """One live entry per patient and service: a patient waiting twice could be
        offered two places at once. An entry that is over may be replaced."""
        key = claims.patient_key(entry.service, entry.patient_ref)
        other = await self._patient(keys=[key], args=[entry.entry_id, ttl, ""])
        if other is None:
            return
        name = other.decode() if isinstance(other, bytes) else str(other)
        claim = claims.parse_claim(await self.redis.get(claims.claim_key(name)))
        raw = await self.redis.get(claims.entry_key(name))
        live = claim.state in ("waiting", "offered")
        if (
            live
            and raw is not None
            and claims.open_entry(self.keyring, name, raw).expires_at > (self.now())
        ):
            raise AlreadyWaiting(name)
        if await self._patient(keys=[key], args=[entry.entry_id, ttl, name]) is not None:
            raise AlreadyWaiting(name)  # another join took it meanwhile

    async def _end(self, entry: WaitEntry) -> None:
        """End an entry some shards may hold: its claim over (no shard offers it), the
        patient free to join again."""
        await self._leave(
            keys=[claims.claim_key(entry.entry_id)],
            args=[claims.done_value("cancelled"), claims.DONE_TTL_SECONDS],
        )
        pkey = claims.patient_key(entry.service, entry.patient_ref)
        if await self.redis.get(pkey) == entry.entry_id.encode():
            await self.redis.delete(pkey)

    async def read(self, caller: Principal, entry_id: str, token: str | None) -> dict[str, Any]:
        entry = await self._owned(caller, entry_id, token)
        claim = claims.parse_claim(await self.redis.get(claims.claim_key(entry_id)))
        return entry_out(entry, claim, self.now(), self.providers)

    async def leave(self, caller: Principal, entry_id: str, token: str | None) -> None:
        """Leave: the entry is over at once (no shard offers it anything more); an offer
        it held goes back and on to the next in line."""
        await self._owned(caller, entry_id, token)
        await self._leave(
            keys=[claims.claim_key(entry_id)],
            args=[claims.done_value("cancelled"), claims.DONE_TTL_SECONDS],
        )
        await asyncio.gather(
            *(self.router.call_shard(s, "waitlist_leave", entry_id) for s in self.shards())
        )

    async def accept(
        self, caller: Principal, entry_id: str, token: str | None, key: str | None
    ) -> dict[str, Any]:
        """Book the place offered: the BookingOut of the contract, with its token. The
        eligibility rule in force is checked against what the patient attested."""
        entry = await self._owned(caller, entry_id, token)
        claim = claims.parse_claim(await self.redis.get(claims.claim_key(entry_id)))
        repeat = claim.state == "booked" and key is not None
        if (claim.state != "offered" and not repeat) or claim.hold_id is None:
            state = (
                "expired"
                if claim.state == "waiting" and entry.expires_at <= self.now()
                else (claim.state)
            )
            raise NoOffer(state)
        pid, service = claim.provider_id or "", claim.service or ""
        scoped = await self.idempotency.scope(caller, key, "waitlist-accept", entry_id)
        booking_token = self.idempotency.token(scoped)
        cmd = ConfirmHold(
            pid,
            service,
            scoped.key,
            self.now(),
            claim.hold_id,
            routable_id(pid, service),
            token_digest(booking_token),
            entry.patient_ref,
            await self.policies.rule(service, pid),
            None,
            entry.contact,
        )
        booking = check(await self.router.submit(cmd))
        site = await self.site(pid)
        ok = hmac.compare_digest(booking.token_digest, token_digest(booking_token))
        return booking_out(booking, site, service, booking_token if ok else None)

    async def erase(self, patient_ref: str) -> int:
        """Erase ``patient_ref``'s entries (an erasure asked for): over at once and gone
        from Redis (the shards drop theirs in :meth:`actors.shard.ShardActor.erase`).
        Returns how many."""
        erased = 0
        async for key in self.redis.scan_iter(match="hexbook:waitlist:*:entry", count=500):
            name = key.decode() if isinstance(key, bytes) else str(key)
            entry_id = name.split(":")[2]
            raw = await self.redis.get(name)
            if raw is None or claims.open_entry(self.keyring, entry_id, raw).patient_ref != (
                patient_ref
            ):
                continue
            await self._leave(
                keys=[claims.claim_key(entry_id)],
                args=[claims.done_value("cancelled"), claims.DONE_TTL_SECONDS],
            )
            await self.redis.delete(name)
            erased += 1
        return erased

    async def _entry(self, entry_id: str) -> WaitEntry:
        raw = await self.redis.get(claims.entry_key(entry_id))
        if raw is None:
            raise EntryNotFound()
        return claims.open_entry(self.keyring, entry_id, raw)

    async def _owned(self, caller: Principal, entry_id: str, token: str | None) -> WaitEntry:
        entry = await self._entry(entry_id)
        if caller.role == "operator" and token is None:
            return entry
        if token is None or not hmac.compare_digest(entry.token_digest, token_digest(token)):
            raise EntryNotFound()
        return entry
