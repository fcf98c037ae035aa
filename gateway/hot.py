"""The work of the hot endpoints (hold, book, search), in one place for both ways a
request reaches it: the FastAPI routes (which document the API and answer every
malformed request) and the fast path of :mod:`gateway.fast` (well-formed requests,
without FastAPI's per-request machinery). Answers are JSON-ready dicts; the caller
encodes them.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from actors.api import calendar_of, new_secret, routable_id, token_digest
from actors.shard import check
from engine.errors import HexbookError, SlotUnavailable
from engine.provider import Provider
from engine.records import Booking, ConfirmHold, Hold, PlaceHold
from gateway.auth import Principal
from gateway.index import AvailabilityIndex
from gateway.observe import Metrics
from gateway.router import ShardRouter
from gateway.timefmt import format_local, parse_instant

__all__ = ["Hot", "SlotStarted", "idempotency", "not_past"]


class SlotStarted(SlotUnavailable):
    def __init__(self) -> None:
        HexbookError.__init__(self, "that slot has already started; choose a later one")
        self.free = 0


def not_past(start: int) -> int:
    """Holds and reschedules go to slots that have not started (409 slot_unavailable)."""
    if start <= int(time.time()):
        raise SlotStarted()
    return start


def idempotency(caller: Principal, key: str | None) -> str:
    """An Idempotency-Key in the caller's namespace (two clients never share one)."""
    return f"{caller.name}:{key}" if key else new_secret()


class Hot:
    """What a hold, a booking and a search need, bound once at start-up."""

    def __init__(
        self,
        router: ShardRouter,
        index: AvailabilityIndex,
        providers: dict[str, Provider],
        metrics: Metrics,
        hold_ttl_seconds: int,
    ) -> None:
        self.router = router
        self.index = index
        self.providers = providers  # provider records, refreshed by PUT and imports
        self.metrics = metrics
        self.hold_ttl_seconds = hold_ttl_seconds

    async def provider(self, provider_id: str) -> Provider:
        # Provider records change only through PUT and imports (which refresh this
        # cache), so the booking path does not pay a shard call per request.
        provider = self.providers.get(provider_id)
        if provider is None:
            provider = check(await self.router.call(provider_id, "provider", provider_id))
            self.providers[provider_id] = provider
        return provider

    @staticmethod
    def hold_out(h: Hold, provider: Provider, service: str) -> dict[str, Any]:
        return {
            "hold_id": h.hold_id,
            "provider_id": provider.provider_id,
            "service": service,
            "start": format_local(h.start, provider.timezone),
            "party_size": h.party_size,
            "expires_at": format_local(h.expires_at, provider.timezone),
        }

    @staticmethod
    def booking_out(
        b: Booking, provider: Provider, service: str, token: str | None = None
    ) -> dict[str, Any]:
        return {
            "booking_id": b.booking_id,
            "booking_token": token,
            "provider_id": provider.provider_id,
            "service": service,
            "start": format_local(b.start, provider.timezone),
            "party_size": b.party_size,
            "status": b.status,
            "patient": {"reference": b.patient_ref},
        }

    async def hold(
        self,
        caller: Principal,
        provider_id: str,
        service: str,
        start: str,
        party_size: int,
        key: str | None,
    ) -> dict[str, Any]:
        """Place a hold: the HoldOut of the contract."""
        at = not_past(parse_instant(start))
        provider = await self.provider(provider_id)
        cmd = PlaceHold(
            provider_id,
            service,
            idempotency(caller, key),
            int(time.time()),
            routable_id(provider_id, service),
            at,
            party_size,
            self.hold_ttl_seconds,
        )
        hold = check(await self.router.submit(cmd))
        self.metrics.holds.inc()
        return self.hold_out(hold, provider, service)

    async def book(
        self, caller: Principal, hold_id: str, patient_ref: str, key: str | None
    ) -> dict[str, Any]:
        """Confirm a hold: the BookingOut of the contract, with the token shown once."""
        provider_id, service = calendar_of(hold_id)
        provider = await self.provider(provider_id)
        token = new_secret()
        cmd = ConfirmHold(
            provider_id,
            service,
            idempotency(caller, key),
            int(time.time()),
            hold_id,
            routable_id(provider_id, service),
            token_digest(token),
            patient_ref,
        )
        booking = check(await self.router.submit(cmd))
        self.metrics.bookings.inc()
        # A repeated request (same key) gets the booking without a new token.
        shown = token if hmac.compare_digest(booking.token_digest, token_digest(token)) else None
        return self.booking_out(booking, provider, service, shown)

    def search(
        self,
        lat: float,
        lng: float,
        service: str,
        radius_km: float,
        from_: str | None,
        to: str | None,
        limit: int,
        party_size: int,
        languages: list[str],
        accessibility: list[str],
        insurance: list[str],
        order: str,
    ) -> dict[str, Any]:
        """Providers with free places near a point, from the index, with its freshness."""
        t_from = parse_instant(from_, "from") if from_ else int(time.time())
        t_to = parse_instant(to, "to") if to else None
        matches = self.index.search(
            lat,
            lng,
            radius_km,
            service,
            t_from,
            t_to,
            limit=limit,
            party_size=party_size,
            languages=languages,
            accessibility=accessibility,
            insurance=insurance,
            order=order,
        )
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
