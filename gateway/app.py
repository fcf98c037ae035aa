"""The gateway app: ``create_app(settings)`` builds it (tests give their own settings).

Layers, outermost first: :class:`~gateway.fast.FastPath` (well-formed holds, bookings,
searches and room visits, watched and answered itself), then FastAPI's stack:
:class:`~gateway.headers.SecureHeaders`, :class:`~gateway.audit_trail.AuditMiddleware`,
:class:`~gateway.observe.Observe` (body limits, metrics, access log, the last word on
errors) and one router per resource (:mod:`gateway.routes`). Both ways in call one
:class:`~gateway.service.BookingService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastapi_offline
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from actors import moves, outbox
from actors.api import Hexbook
from actors.availability import AvailabilityStreams
from actors.embedded_redis import EmbeddedRedis, redis_endpoint
from actors.policy import PolicyCache, PolicyStore
from actors.series import SeriesBook
from gateway import openapi, problems
from gateway.audit_trail import AuditMiddleware, AuditTrail
from gateway.auth import Authenticator, SharedBuckets
from gateway.deliver import Deliverer, deliverer_of
from gateway.deps import Runtime
from gateway.fast import FastPath
from gateway.headers import SecureHeaders
from gateway.idempotency import Idempotency, token_secret
from gateway.index import AvailabilityIndex
from gateway.interop.publish import SmartPublisher
from gateway.interop.reconcile import source_records
from gateway.interop.schedules import ImportScheduler
from gateway.keys import KeyStore
from gateway.observe import Metrics, Observe, Watch
from gateway.pages import STATIC as PAGE_ASSETS
from gateway.pages import router as pages
from gateway.pages.live import pulse_of
from gateway.retention import Eraser
from gateway.room import WaitingRooms
from gateway.router import ShardRouter
from gateway.routes import ROUTERS
from gateway.service import BookingService
from gateway.settings import Settings, data_keyring
from gateway.waitlist import Waitlists

log = logging.getLogger("hexbook.gateway")
# Where a waiting room's admissions become load: their 503s slow the room down (a crowd
# polling the room itself is not helped by admitting fewer).
BOOKING_ROUTES = frozenset(
    {"/v1/holds", "/v1/bookings", "/v1/series/holds", "/v1/series/bookings", "/v1/search"}
)

__all__ = ["TELEMETRY_OFF", "Gateway", "create_app"]

# hexbook exports its own Prometheus metrics; FastAPI's OpenTelemetry hooks otherwise
# look up the tracer providers on every request (5% of a hold's CPU, measured).
TELEMETRY_OFF: Any = {"tracing": False, "metrics": False, "logs": False}
ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI, served from here


async def _runtime(
    settings: Settings,
    metrics: Metrics,
    hb: Hexbook,
    stack: contextlib.AsyncExitStack,
    redis_server: EmbeddedRedis | None,
) -> Runtime:
    """Build the gateway's parts on a connected ``hb``; ``stack`` stops them."""
    keys = KeyStore(hb.redis)
    # Rate limits shared with every gateway of the deployment (gateway.auth): a small
    # pool of its own, quick to give up, so that an unreachable Redis falls back to this
    # process's buckets within a second.
    limits_pool = aioredis.BlockingConnectionPool.from_url(
        hb.redis_url, max_connections=16, timeout=1.0, socket_timeout=1.0,
        socket_connect_timeout=1.0,
    )  # fmt: skip
    limits_redis = aioredis.Redis(connection_pool=limits_pool)
    stack.push_async_callback(limits_pool.disconnect)
    stack.push_async_callback(limits_redis.aclose)
    auth = Authenticator(
        keys,
        SharedBuckets(limits_redis),
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
        settings.shard_deadline_seconds,
    )
    stack.push_async_callback(router.aclose)
    first = settings.index_first_day
    index = AvailabilityIndex(
        hb,
        hb.stream_urls(),
        None
        if first is None
        else int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()),
        settings.index_days,
    )
    await index.load_and_follow()
    stack.push_async_callback(index.stop)
    stream = AvailabilityStreams(
        hb.stream_urls(), max_block_seconds=settings.feed_keepalive_seconds + 1
    )
    stack.push_async_callback(stream.close)
    configured = settings.token_secret.get_secret_value() if settings.token_secret else None
    secret = await asyncio.to_thread(token_secret, hb.redis, configured)
    idempotency = Idempotency(hb.redis_url, secret, settings.idempotency_ttl_seconds)
    stack.push_async_callback(idempotency.close)
    # Rules, templates and series records: a bounded pool that makes a request wait for
    # a connection (up to 2 s) rather than fail when a launch sends hundreds at once.
    policy_pool = aioredis.BlockingConnectionPool.from_url(
        hb.redis_url,
        max_connections=settings.policy_redis_connections,
        timeout=2.0,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
    )
    policy_redis = aioredis.Redis(connection_pool=policy_pool)
    stack.push_async_callback(policy_pool.disconnect)
    stack.push_async_callback(policy_redis.aclose)
    policies = PolicyCache(PolicyStore(policy_redis), settings.policy_cache_seconds)
    series = SeriesBook(policy_redis, router.submit, hb.clock.seconds, keyring=hb.keyring)
    ticker = aioredis.Redis.from_url(hb.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    stack.push_async_callback(ticker.aclose)
    rooms = WaitingRooms(
        policy_redis,
        index,
        hb.clock.now,
        secret,
        metrics.registry,
        lambda: metrics.answered(503, BOOKING_ROUTES),
        settings.room_tick_seconds,
        ticker,
    )
    await rooms.tick()  # know the rooms (the hold gate) before the first request
    admitting = asyncio.create_task(rooms.run())
    stack.callback(admitting.cancel)
    service = BookingService(
        hb, router, index, idempotency, metrics, settings.hold_ttl_seconds, policies, series, rooms
    )
    sweeper = asyncio.create_task(_sweep_series(series, policies, settings.series_sweep_seconds))
    stack.callback(sweeper.cancel)
    smart = SmartPublisher(
        index,
        lambda: source_records(hb.redis),
        settings.booking_link,
        settings.smart_refresh_seconds,
    )
    imports = ImportScheduler(hb, index.providers.update, settings.import_tick_seconds)
    await imports.start()
    stack.push_async_callback(imports.stop)
    metrics.bind(
        lambda: router.inflight,
        lambda: index.freshness()["age_ms"] / 1000,
        lambda: index.applied,
    )
    if redis_server is not None:
        metrics.bind_redis(lambda: float(redis_server.is_running()), lambda: redis_server.restarts)
    trail = AuditTrail(policy_redis, hb.clock.seconds)
    waitlists = Waitlists(
        policy_redis,
        router,
        lambda: list(hb.directory.shards),
        hb.clock.seconds,
        idempotency,
        policies,
        index.providers,
        service.provider,
        hb.keyring,
    )
    eraser = Eraser(
        router,
        lambda: list(hb.directory.shards),
        hb.clock.seconds,
        ticker,
        trail,
        settings.retention_days,
        series,
        waitlists,
    )
    purging = asyncio.create_task(eraser.run(settings.retention_sweep_seconds))
    stack.callback(purging.cancel)
    for deliverer in await _deliverers(settings, hb, stack):
        delivering = asyncio.create_task(deliverer.run())
        stack.callback(delivering.cancel)
    watching = asyncio.create_task(_watch_outbox(hb, metrics))
    stack.callback(watching.cancel)
    resuming = asyncio.create_task(_resume_moves(hb))
    stack.callback(resuming.cancel)
    return Runtime(
        settings=settings,
        metrics=metrics,
        hexbook=hb,
        service=service,
        auth=auth,
        keys=keys,
        index=index,
        stream=stream,
        smart=smart,
        imports=imports,
        redis_server=redis_server,
        audit=trail,
        eraser=eraser,
        waitlists=waitlists,
    )


async def _deliverers(
    settings: Settings, hb: Hexbook, stack: contextlib.AsyncExitStack
) -> list[Deliverer]:
    """This gateway's deliverers of notifications, if it runs them and a channel is set:
    one per outbox (each Redis shards journal to has its own)."""
    if not settings.notify or not (settings.smtp_url or settings.webhook_url):
        return []
    return [await deliverer_of(settings, url, hb.keyring, stack) for url in hb.stream_urls()]


async def _watch_outbox(hb: Hexbook, metrics: Metrics, every: float = 2.0) -> None:
    """Keep the outbox gauges of /metrics current."""
    while True:
        try:
            # off the loop, the directory read too (stream_clients asks Redis)
            metrics.show_outbox(
                await asyncio.to_thread(lambda: outbox.stats_of(hb.stream_clients()))
            )
        except Exception as exc:  # Redis away: the gauges keep their last values
            log.debug("outbox stats: %s", exc)
        await asyncio.sleep(every)


async def _resume_moves(hb: Hexbook, every: float = 5.0) -> None:
    """Finish the moves a crash cut short (every gateway as it starts; two at once end
    where one would), trying again while a shard or Redis is away."""
    while True:
        try:
            done = await asyncio.to_thread(moves.resume, hb)
        except Exception as exc:  # a shard or Redis away: again shortly
            log.warning("moves: %s: %s; trying again", type(exc).__name__, exc)
            await asyncio.sleep(every)
            continue
        if done:
            log.info("moves: finished %s", ", ".join(done))
        return


async def _sweep_series(series: SeriesBook, policies: PolicyCache, every: float) -> None:
    """Finish the series a client left half way (none stays half booked)."""
    while True:
        await asyncio.sleep(every)
        try:
            ended = await series.resume_stale(2 * every, policies.rule_for)
        except Exception as exc:  # Redis away: the next round tries again
            log.warning("series sweeper: %s: %s", type(exc).__name__, exc)
        else:
            if ended:
                log.info("series sweeper finished %d series left half way", ended)


class Gateway(FastAPI):
    """FastAPI with the fast path in front of its stack (ADR 0010): a hot request it
    serves never enters FastAPI's middlewares, whose wrapped sends cost a hold a third
    of its time; every other request goes through :meth:`stack`."""

    fast: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast is None or scope["type"] != "http":
            await self.stack(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it: handlers find the runtime there
        await self.fast(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's whole stack: middlewares, routes, error handlers."""
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    hexbook: Hexbook | None = None,
    redis_server: EmbeddedRedis | None = None,
) -> FastAPI:
    """Build the gateway. With ``hexbook`` given (tests, ``hexbook up``), it is used as it
    is; else the app connects at start-up (embedded Redis unless ``redis_url``, local Ray
    unless ``ray_address``). ``redis_server``: the embedded redis-server that ``hexbook
    up`` supervises, reported in ``/readyz`` and ``/metrics``."""
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            hb = hexbook
            if hb is None:
                url = stack.enter_context(redis_endpoint(settings.redis_url, settings.data_dir))
                external = settings.redis_url or os.environ.get("REDIS_URL")
                hb = await asyncio.to_thread(
                    Hexbook.connect,
                    url,
                    ray_address=settings.ray_address,
                    shards=settings.shards,
                    journals=settings.journal_redis_urls,
                    namespace=settings.namespace,
                    keyring=data_keyring(settings, embedded=not external, create=True),
                )
            app.state.runtime = await _runtime(settings, metrics, hb, stack, redis_server)
            stack.callback(pulse_of(app.state.runtime).stop)  # a minute of samples from now
            # What start-up built lives as long as the process: keep it out of every
            # collection, or a full one scans all of it in the middle of requests.
            gc.collect()
            gc.freeze()
            # Each request leaves a few dozen short-lived containers (models, answers):
            # at the default threshold (700) that is a young collection every few
            # requests. 20,000 makes them about 30 times rarer, each still small.
            gc.set_threshold(20_000, 10, 10)
            yield

    app = Gateway(
        title="hexbook",
        version="1",
        summary="Real-time availability and booking for appointment launches",
        description="Errors are application/problem+json with a stable `code`. Search, "
        "provider reads, the feed and the SMART files are open to anonymous callers "
        "(limited per address); everything else needs `Authorization: Bearer <api key>`. "
        "See docs/api.md.",
        lifespan=lifespan,
        telemetry=TELEMETRY_OFF,
        docs_url=None,
        redoc_url=None,
    )
    watch = Watch(
        metrics,
        max_body=settings.max_body_bytes,
        access_log=settings.access_log,
        large={"/v1/imports": settings.import_max_bytes},
    )
    if settings.fast_path:
        app.fast = FastPath(app.stack, watch)  # in front: the same limits, metrics, logs
    app.add_middleware(Observe, watch=watch)
    app.add_middleware(AuditMiddleware)  # after Observe has the route and the caller
    app.add_middleware(SecureHeaders)  # outermost of the stack (the fast path adds them itself)
    problems.install(app)
    for router in ROUTERS:
        app.include_router(router)
    openapi.install(app)
    app.include_router(pages)
    app.mount("/assets", StaticFiles(directory=ASSETS), name="assets")
    app.mount("/static", StaticFiles(directory=PAGE_ASSETS), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="hexbook API",
            swagger_js_url=f"{root}/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/assets/favicon.png",
        )

    return app
