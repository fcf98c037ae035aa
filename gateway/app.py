"""The gateway app: ``create_app(settings)`` builds it (tests give their own settings)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from actors.api import Hexbook, calendar_of, token_digest
from actors.embedded_redis import redis_endpoint
from actors.shard import check
from engine.errors import NotFound
from engine.provider import Provider
from engine.records import (
    Booking,
    CancelBooking,
    ReleaseHold,
    RescheduleBooking,
)
from engine.schedule import Blocked, WeeklyTemplate, Window
from gateway import feed, problems
from gateway.auth import Admin, Authenticator, Booker, Caller, Forbidden, Operator, Principal
from gateway.fast import FastPath
from gateway.hot import Hot, idempotency, not_past
from gateway.index import AvailabilityIndex
from gateway.interop.publish import SmartPublisher
from gateway.interop.reconcile import source_records
from gateway.interop.runner import run_import
from gateway.interop.schedules import ImportScheduler, ScheduleStore
from gateway.keys import ApiKey, KeyStore
from gateway.observe import Metrics, Observe
from gateway.router import ShardRouter
from gateway.schemas import (
    BookingOut,
    BookingRequest,
    HoldOut,
    HoldRequest,
    ImportIn,
    ImportOut,
    ImportScheduleIn,
    ImportScheduleOut,
    KeyIn,
    KeyOut,
    ProviderIn,
    ProviderOut,
    RescheduleRequest,
    SlotOut,
    SlotsOut,
)
from gateway.settings import Settings
from gateway.timefmt import format_local, parse_instant

__all__ = ["TELEMETRY_OFF", "create_app"]

_json = msgspec.json.Encoder()

# hexbook exports its own Prometheus metrics; FastAPI's OpenTelemetry hooks otherwise
# look up the tracer providers on every request (5% of a hold's CPU, measured).
TELEMETRY_OFF: Any = {"tracing": False, "metrics": False, "logs": False}

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
BookingToken = Annotated[str | None, Header(alias="X-Booking-Token", max_length=200)]


def create_app(settings: Settings | None = None, hexbook: Hexbook | None = None) -> FastAPI:
    """Build the gateway. With ``hexbook`` given (tests), it is used as it is; else the
    app connects at start-up (embedded Redis unless ``redis_url``, local Ray unless
    ``ray_address``)."""
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            hb = hexbook
            if hb is None:
                url = stack.enter_context(redis_endpoint(settings.redis_url, settings.data_dir))
                hb = await asyncio.to_thread(
                    Hexbook.connect,
                    url,
                    ray_address=settings.ray_address,
                    shards=settings.shards,
                    namespace=settings.namespace,
                )
            app.state.hexbook = hb
            app.state.keys = KeyStore(hb._redis)
            app.state.auth = Authenticator(
                app.state.keys,
                cache_seconds=settings.key_cache_seconds,
                rate_per_key=settings.rate_per_key,
                rate_per_address=settings.rate_per_address,
            )
            router = ShardRouter(
                hb,
                settings.batch_max,
                settings.max_inflight,
                metrics.batch_size.observe,
                settings.calls_per_shard,
            )
            app.state.router = router
            first = settings.index_first_day or (datetime.now(UTC).date() - timedelta(days=1))
            index = AvailabilityIndex(
                hb,
                hb.redis_url,
                int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()),
                settings.index_days,
            )
            await index.start()
            stack.push_async_callback(index.stop)
            app.state.index = index
            app.state.providers = index.providers
            app.state.feed_clients = 0
            app.state.hot = Hot(router, index, index.providers, metrics, settings.hold_ttl_seconds)
            app.state.smart = SmartPublisher(
                index,
                lambda: source_records(hb._redis),
                settings.booking_link,
                settings.smart_refresh_seconds,
            )
            imports = ImportScheduler(hb, index.providers.update, settings.import_tick_seconds)
            await imports.start()
            stack.push_async_callback(imports.stop)
            app.state.imports = imports
            metrics.bind(
                lambda: router.inflight,
                lambda: index.freshness()["age_ms"] / 1000,
                lambda: index.applied,
            )
            yield

    app = FastAPI(
        title="hexbook",
        version="1",
        summary="Real-time availability and booking for appointment launches",
        lifespan=lifespan,
        telemetry=TELEMETRY_OFF,
    )
    app.state.metrics = metrics
    if settings.fast_path:
        app.add_middleware(FastPath)  # inside Observe: limits, metrics and logs apply
    app.add_middleware(
        Observe,
        metrics=metrics,
        max_body=settings.max_body_bytes,
        access_log=settings.access_log,
        large={"/v1/imports": settings.import_max_bytes},
    )
    problems.install(app)
    app.include_router(_ops())
    app.include_router(_v1(settings, metrics))
    app.include_router(feed.router(settings))
    app.include_router(_smart(settings))
    return app


def _router(request: Request) -> ShardRouter:
    router: ShardRouter = request.app.state.router
    return router


def _smart(settings: Settings) -> APIRouter:
    """The SMART Scheduling Links feed: public, cached, rendered from the index."""
    api = APIRouter(prefix="/smart", tags=["smart"])
    max_age = f"public, max-age={int(settings.smart_refresh_seconds)}"

    async def _refresh(pub: SmartPublisher) -> None:
        # Changed rows are copied here, in the loop that updates the index; rendering
        # them (JSON, time zones) runs in a thread so the gateway keeps serving.
        async with pub.lock:
            work = pub.collect()
            if work is not None:
                await asyncio.to_thread(pub.render, *work)

    def cached(request: Request, body: bytes, etag: str, media_type: str) -> Response:
        headers = {"ETag": etag, "Cache-Control": max_age}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    @api.get("/$bulk-publish")
    async def bulk_publish(request: Request, _: Caller, state: str | None = None) -> Response:
        """The manifest: Location, Schedule and Slot files (Slot files by state; ``state``
        keeps one). Slots are a day each, with the free places as ``slot-capacity``."""
        pub: SmartPublisher = request.app.state.smart
        await _refresh(pub)
        base = str(request.base_url).rstrip("/")
        manifest = pub.manifest(base, str(request.url), state)
        body = _json.encode(manifest)
        etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
        return cached(request, body, etag, "application/json")

    @api.get("/{name}")
    async def smart_file(request: Request, name: str, _: Caller) -> Response:
        """One NDJSON file of the feed."""
        pub: SmartPublisher = request.app.state.smart
        await _refresh(pub)
        if name not in pub.files:
            raise NotFound(f"no file {name!r} in the SMART feed; see /smart/$bulk-publish")
        return cached(request, pub.files[name], pub.etags[name], "application/fhir+ndjson")

    return api


def _ops() -> APIRouter:
    api = APIRouter(tags=["operations"])

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Shards reachable and Redis answering."""
        hb: Hexbook = request.app.state.hexbook
        try:
            await asyncio.wait_for(asyncio.to_thread(hb._redis.ping), 2)
            shards = hb.directory.shards
            await asyncio.wait_for(asyncio.gather(*(hb.shard(s).info.remote() for s in shards)), 5)
        except Exception as exc:  # any failure means not ready, with the reason
            return problems.problem(503, "unavailable", f"not ready: {type(exc).__name__}")
        return JSONResponse({"status": "ready", "shards": len(shards)})

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        """Prometheus text format: requests, latency, holds, bookings, 409s, batch sizes,
        index freshness."""
        registry = request.app.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/keys", status_code=201, tags=["operations"])
    async def create_key(request: Request, body: KeyIn, _: Operator) -> KeyOut:
        """Create an API key (operator). The answer shows the key once."""
        store: KeyStore = request.app.state.keys
        key, record = await asyncio.to_thread(
            store.create, body.role, body.name, tuple(body.providers), body.rate_per_second
        )
        return _key_out(record, key)

    @api.post("/v1/imports", tags=["operations"])
    async def import_once(request: Request, body: ImportIn, _: Operator) -> ImportOut:
        """Run a connector once (operator): fetch the source, create or update its
        providers and calendars, and report what happened. Confirmed bookings are never
        dropped: capacity lowered below them is a conflict in the answer."""
        hb: Hexbook = request.app.state.hexbook
        placed = request.app.state.providers.update
        return await asyncio.to_thread(run_import, hb, body, placed)

    @api.post("/v1/imports/schedules", status_code=201, tags=["operations"])
    async def create_import_schedule(
        request: Request, body: ImportScheduleIn, _: Operator
    ) -> ImportScheduleOut:
        """Run a connector on a schedule (operator): at once, then every
        ``every_seconds``. Each run's summary, or its error, is kept on the schedule.
        Several gateways share the schedules and run each due import once."""
        store: ScheduleStore = request.app.state.imports.store
        return await asyncio.to_thread(store.create, body)

    @api.get("/v1/imports/schedules", tags=["operations"])
    async def list_import_schedules(request: Request, _: Operator) -> list[ImportScheduleOut]:
        """Every import schedule with its last run."""
        store: ScheduleStore = request.app.state.imports.store
        return await asyncio.to_thread(store.list)

    @api.get("/v1/imports/schedules/{schedule_id}", tags=["operations"])
    async def get_import_schedule(
        request: Request, schedule_id: str, _: Operator
    ) -> ImportScheduleOut:
        """One import schedule with its last run."""
        store: ScheduleStore = request.app.state.imports.store
        return await asyncio.to_thread(store.get, schedule_id)

    @api.delete("/v1/imports/schedules/{schedule_id}", status_code=204, tags=["operations"])
    async def delete_import_schedule(request: Request, schedule_id: str, _: Operator) -> Response:
        """Stop an import schedule (a run under way finishes; its outcome is dropped)."""
        store: ScheduleStore = request.app.state.imports.store
        await asyncio.to_thread(store.delete, schedule_id)
        return Response(status_code=204)

    @api.get("/v1/keys", tags=["operations"])
    async def list_keys(request: Request, _: Operator) -> list[KeyOut]:
        """Every key, revoked ones included (never the keys themselves)."""
        store: KeyStore = request.app.state.keys
        return [_key_out(k) for k in await asyncio.to_thread(store.list)]

    @api.delete("/v1/keys/{key_id}", tags=["operations"])
    async def revoke_key(request: Request, key_id: str, _: Operator) -> KeyOut:
        """Revoke a key; gateways stop accepting it within their key cache time."""
        store: KeyStore = request.app.state.keys
        return _key_out(await asyncio.to_thread(store.revoke, key_id))

    return api


def _key_out(record: ApiKey, key: str | None = None) -> KeyOut:
    return KeyOut(
        key_id=record.key_id,
        role=record.role,
        name=record.name,
        providers=list(record.providers),
        rate_per_second=record.rate_per_second,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        key=key,
    )


def _v1(settings: Settings, metrics: Metrics) -> APIRouter:
    api = APIRouter(prefix="/v1")

    async def provider_of(request: Request, provider_id: str) -> Provider:
        hot: Hot = request.app.state.hot
        return await hot.provider(provider_id)

    @api.get("/search", tags=["search"])
    async def search(
        request: Request,
        _: Caller,
        lat: Annotated[float, Query(ge=-90, le=90)],
        lng: Annotated[float, Query(ge=-180, le=180)],
        service: Annotated[str, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")],
        radius_km: Annotated[float, Query(gt=0, le=100)] = 10.0,
        from_: Annotated[str | None, Query(alias="from")] = None,
        to: Annotated[str | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        party_size: Annotated[int, Query(ge=1, le=50)] = 1,
        language: Annotated[list[str] | None, Query()] = None,
        accessibility: Annotated[list[str] | None, Query()] = None,
        insurance: Annotated[list[str] | None, Query()] = None,
        order: Annotated[str, Query(pattern="^(distance|earliest)$")] = "distance",
    ) -> Response:
        """Providers with free places near a point, nearest (or earliest) first, each with
        its next free slots, from the gateway's index; ``index`` says how fresh it is."""
        hot: Hot = request.app.state.hot
        body = hot.search(
            lat, lng, service, radius_km, from_, to, limit, party_size,
            language or [], accessibility or [], insurance or [], order,
        )  # fmt: skip
        # Encoded here (msgspec): FastAPI's generic encoder walks every value in Python.
        return Response(_json.encode(body), media_type="application/json")

    @api.put("/providers/{provider_id}", tags=["providers"], status_code=200)
    async def put_provider(
        request: Request, provider_id: str, body: ProviderIn, caller: Admin
    ) -> ProviderOut:
        """Create or update a provider and its schedule (an operator, or a provider-admin
        key that names this provider)."""
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
        hb: Hexbook = request.app.state.hexbook
        await asyncio.to_thread(
            hb.provision, provider, template, body.first_day, body.days, body.slot_minutes
        )
        request.app.state.providers[provider_id] = provider
        return ProviderOut(**{f: getattr(provider, f) for f in ProviderOut.model_fields})

    @api.get("/providers/{provider_id}", tags=["providers"])
    async def get_provider(request: Request, provider_id: str, _: Caller) -> ProviderOut:
        """One provider."""
        p = await provider_of(request, provider_id)
        return ProviderOut(**{f: getattr(p, f) for f in ProviderOut.model_fields})

    @api.get("/providers/{provider_id}/slots", tags=["providers"])
    async def get_slots(request: Request, provider_id: str, service: str, _: Caller) -> SlotsOut:
        """The slot grid with remaining places (authoritative, from the shard)."""
        p = await provider_of(request, provider_id)
        q = request.query_params
        t_from = parse_instant(q["from"], "from") if "from" in q else None
        t_to = parse_instant(q["to"], "to") if "to" in q else None
        grid = check(await _router(request).call(provider_id, "slots", provider_id, service))
        out = []
        for i, cap in enumerate(grid["capacity"]):
            start = grid["start"] + i * grid["slot_seconds"]
            if (
                not cap
                or (t_from is not None and start < t_from)
                or (t_to is not None and start >= t_to)
            ):
                continue
            out.append(
                SlotOut(
                    start=format_local(start, p.timezone),
                    capacity=cap,
                    remaining=max(cap - grid["booked"][i] - grid["held"][i], 0),
                )
            )
        return SlotsOut(
            provider_id=provider_id,
            service=service,
            slot_minutes=grid["slot_seconds"] // 60,
            slots=out,
        )

    @api.post("/holds", status_code=201, tags=["bookings"], response_model=HoldOut)
    async def post_hold(
        request: Request, body: HoldRequest, caller: Booker, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Reserve places in a slot for a short time."""
        hot: Hot = request.app.state.hot
        out = await hot.hold(
            caller, body.provider_id, body.service, body.start, body.party_size, idempotency_key
        )
        return Response(_json.encode(out), status_code=201, media_type="application/json")

    @api.delete("/holds/{hold_id}", status_code=204, tags=["bookings"])
    async def delete_hold(
        request: Request, hold_id: str, caller: Booker, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Release a hold."""
        provider_id, service = calendar_of(hold_id)
        cmd = ReleaseHold(
            provider_id, service, idempotency(caller, idempotency_key), int(time.time()), hold_id
        )
        check(await _router(request).submit(cmd))
        return Response(status_code=204)

    @api.post("/bookings", status_code=201, tags=["bookings"], response_model=BookingOut)
    async def post_booking(
        request: Request,
        body: BookingRequest,
        caller: Booker,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Confirm a hold. The answer carries the booking token, once."""
        hot: Hot = request.app.state.hot
        out = await hot.book(caller, body.hold_id, body.patient.reference, idempotency_key)
        return Response(_json.encode(out), status_code=201, media_type="application/json")

    async def authorised_booking(
        request: Request, booking_id: str, token: str | None, caller: Principal
    ) -> tuple[Booking, Provider, str]:
        provider_id, service = calendar_of(booking_id)
        booking = check(
            await _router(request).call(provider_id, "booking", provider_id, service, booking_id)
        )
        if caller.role == "operator" and token is None:
            pass  # operators may read and cancel any booking
        elif token is None or not hmac.compare_digest(booking.token_digest, token_digest(token)):
            # Same answer as a missing booking: a wrong token learns nothing.
            raise NotFound(f"booking {booking_id[:12]}… not found for this token")
        return booking, await provider_of(request, provider_id), service

    @api.get("/bookings/{booking_id}", tags=["bookings"])
    async def get_booking(
        request: Request, booking_id: str, caller: Booker, booking_token: BookingToken = None
    ) -> BookingOut:
        """Read a booking (needs its token in X-Booking-Token, or an operator key)."""
        booking, p, service = await authorised_booking(request, booking_id, booking_token, caller)
        return BookingOut(**Hot.booking_out(booking, p, service))

    @api.delete("/bookings/{booking_id}", status_code=204, tags=["bookings"])
    async def delete_booking(
        request: Request,
        booking_id: str,
        caller: Booker,
        booking_token: BookingToken = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Cancel a booking (needs its token, or an operator key)."""
        _, _, service = await authorised_booking(request, booking_id, booking_token, caller)
        provider_id, _ = calendar_of(booking_id)
        cmd = CancelBooking(
            provider_id, service, idempotency(caller, idempotency_key), int(time.time()), booking_id
        )
        check(await _router(request).submit(cmd))
        metrics.cancellations.inc()
        return Response(status_code=204)

    @api.post("/bookings/{booking_id}/reschedule", tags=["bookings"])
    async def reschedule(
        request: Request,
        booking_id: str,
        body: RescheduleRequest,
        caller: Booker,
        booking_token: BookingToken = None,
        idempotency_key: IdempotencyKey = None,
    ) -> BookingOut:
        """Move a booking; the old slot is freed only when the new one is booked."""
        _, p, service = await authorised_booking(request, booking_id, booking_token, caller)
        new_start = not_past(parse_instant(body.start))
        if (body.provider_id, body.service) != (p.provider_id, service):
            # Another calendar: hold, confirm, cancel under keys derived from this one.
            hb: Hexbook = request.app.state.hexbook
            target = await provider_of(request, body.provider_id)
            moved = await asyncio.to_thread(
                hb.reschedule,
                booking_id,
                p.provider_id,
                service,
                new_start,
                new_provider_id=body.provider_id,
                new_service=body.service,
                key=idempotency(caller, idempotency_key),
            )
            return BookingOut(**Hot.booking_out(moved, target, body.service))
        cmd = RescheduleBooking(
            p.provider_id,
            service,
            idempotency(caller, idempotency_key),
            int(time.time()),
            booking_id,
            new_start,
        )
        moved = check(await _router(request).submit(cmd))
        return BookingOut(**Hot.booking_out(moved, p, service))

    return api
