"""What the gateway tells its operators: Prometheus metrics and structured logs.

One pure ASGI middleware (cheaper than Starlette's ``BaseHTTPMiddleware``) times every
request, counts it by route *template* (``/v1/holds/{hold_id}``: ids never become label
values, and hold ids and booking tokens never reach a log) and status, refuses oversized
bodies with 413 before they are read, and writes one JSON log line per request when the
access log is on (5xx answers are always logged). It is also the last word on errors:
whatever escapes the app is answered here with :func:`gateway.problems.problem_of`, so
a 500 or a 503 is counted and logged like any answer, and nothing reaches the server's
own error page or its traceback log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import problems

__all__ = ["JsonFormatter", "Metrics", "Observe", "Watch", "configure_logging"]

access = logging.getLogger("hexbook.access")

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hexbook_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "hexbook_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.holds = Counter("hexbook_holds_placed", "holds placed", registry=r)
        self.bookings = Counter("hexbook_bookings_confirmed", "bookings confirmed", registry=r)
        self.cancellations = Counter("hexbook_bookings_cancelled", "bookings cancelled", registry=r)
        self.conflicts = Counter(
            "hexbook_conflicts",
            "409 answers (someone else was faster), by route",
            ["route"],
            registry=r,
        )
        self.batch_size = Histogram(
            "hexbook_shard_batch_size",
            "commands per shard call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.inflight = Gauge("hexbook_commands_inflight", "commands waiting on shards", registry=r)
        self.index_age = Gauge(
            "hexbook_index_age_seconds", "age of the search index's last change", registry=r
        )
        self.index_entries = Gauge(
            "hexbook_index_entries_applied", "stream entries applied to the index", registry=r
        )
        self.feed_clients = Gauge("hexbook_feed_clients", "open live-feed streams", registry=r)
        self.redis_up = Gauge(
            "hexbook_embedded_redis_up", "1 while the embedded redis-server runs", registry=r
        )
        self.redis_restarts = Gauge(
            "hexbook_embedded_redis_restarts", "restarts of the embedded redis-server", registry=r
        )
        # The notifications outbox, deployment-wide (read from Redis every few seconds).
        self.outbox_waiting = Gauge(
            "hexbook_outbox_waiting", "notices in the outbox, not yet delivered", registry=r
        )
        self.outbox_pending = Gauge(
            "hexbook_outbox_pending", "notices a deliverer is working on", registry=r
        )
        self.outbox_lag = Gauge(
            "hexbook_outbox_lag_seconds", "age of the oldest notice not yet delivered", registry=r
        )
        self.notices = Gauge(
            "hexbook_notices",
            "notices delivered (outcome=delivered, by channel), failed attempts, dead "
            "letters made and skipped (no channel), since the deployment began",
            ["outcome", "channel"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "hexbook_outbox_dead_letters", "dead letters waiting for a replay", registry=r
        )

    def answered(self, status: int, routes: frozenset[str] | None = None) -> float:
        """HTTP answers of ``status`` so far, on ``routes`` (templates; ``None``: all)."""
        code = str(status)
        return sum(
            sample.value
            for metric in self.requests.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
            and sample.labels.get("status") == code
            and (routes is None or sample.labels.get("route") in routes)
        )

    def totals(self) -> dict[str, float]:
        """The counts so far a dashboard turns into rates: holds, bookings, cancellations,
        answers, and the answers that were 409 (conflicts) and 503 (unavailable)."""
        out = {"answers": 0.0, "conflicts": 0.0, "unavailable": 0.0}
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out["answers"] += sample.value
                    status = sample.labels.get("status")
                    if status == "409":
                        out["conflicts"] += sample.value
                    elif status == "503":
                        out["unavailable"] += sample.value
        for name, counter in (
            ("holds", self.holds),
            ("bookings", self.bookings),
            ("cancellations", self.cancellations),
        ):
            out[name] = sum(
                s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")
            )
        return out

    def bind(self, inflight: Callable[[], float], index_age: Callable[[], float],
             index_entries: Callable[[], float]) -> None:  # fmt: skip
        """Read gauges from live objects at scrape time."""
        self.inflight.set_function(inflight)
        self.index_age.set_function(index_age)
        self.index_entries.set_function(index_entries)

    def show_outbox(self, stats: dict[str, Any]) -> None:
        """Set the outbox gauges from :func:`actors.outbox.stats`."""
        self.outbox_waiting.set(stats["waiting"])
        self.outbox_pending.set(stats["pending"])
        self.outbox_lag.set(stats["oldest_seconds"])
        self.dead_letters.set(stats["dead"])
        for name, value in stats["counters"].items():
            outcome, _, channel = name.partition(":")
            self.notices.labels(outcome, channel or "").set(value)

    def bind_redis(self, up: Callable[[], float], restarts: Callable[[], float]) -> None:
        """Read the embedded redis-server's state at scrape time."""
        self.redis_up.set_function(up)
        self.redis_restarts.set_function(restarts)


class Watch:
    """What every answer is watched for, whichever way it was served: the body limit
    before a request is read, and its count, latency and access-log line after."""

    def __init__(
        self,
        metrics: Metrics,
        max_body: int,
        access_log: bool = False,
        large: dict[str, int] | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_body = max_body
        self.large = large or {}  # path -> its own body limit (imports carry files)
        self.access_log = access_log
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def record(self, scope: Scope, status: int, started: float) -> None:
        """Count and time the answer ``status`` to ``scope`` (begun at ``started``,
        :func:`time.perf_counter`), labelled by its route template; log it if due."""
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        m = self.metrics
        # Labelled children are looked up once per route and status, not per request.
        child = self._children.get((method, template, status))
        if child is None:
            child = (
                m.requests.labels(method, template, str(status)),
                m.latency.labels(method, template),
                m.conflicts.labels(template) if status == 409 else None,
            )
            if len(self._children) < 10_000:
                self._children[(method, template, status)] = child
        child[0].inc()
        child[1].observe(elapsed)
        if child[2] is not None:
            child[2].inc()
        if status >= 500 or self.access_log:
            principal = getattr(scope.get("state", {}).get("principal"), "name", None)
            client = scope.get("client")
            access.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "request",
                extra={
                    "fields": {
                        "method": method,
                        "route": template,
                        "status": status,
                        "ms": round(elapsed * 1000, 3),
                        "caller": principal or (client[0] if client else None),
                    }
                },
            )

    def refuse(self, scope: Scope) -> Any:
        """The 413 or 411 answer to a request whose body is not to be read, else None."""
        length = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        limit = self.large.get(scope["path"], self.max_body)
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                return problems.problem(
                    413, "body_too_large", f"request bodies are limited to {limit} bytes"
                )
        elif chunked is not None and b"chunked" in chunked:
            return problems.problem(
                411, "length_required", "send a Content-Length; chunked bodies are not accepted"
            )
        return None


class Observe:
    """ASGI middleware: body limit, metrics, access log (a :class:`Watch`)."""

    def __init__(self, app: ASGIApp, watch: Watch) -> None:
        self.app = app
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        refusal = self.watch.refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            status = refusal.status_code
        else:
            started_response = False

            async def send_status(message: Message) -> None:
                nonlocal status, started_response
                if message["type"] == "http.response.start":
                    status, started_response = message["status"], True
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            except Exception as exc:
                if started_response:  # too late to answer: the client sees a cut response
                    access.error("response cut short", exc_info=exc)
                else:
                    answer = problems.problem_of(exc)
                    status = answer.status_code
                    await answer(scope, receive, send)
        self.watch.record(scope, status, started)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Structured (JSON lines) logs on stderr for hexbook's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("hexbook")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
