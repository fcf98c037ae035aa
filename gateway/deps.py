"""What the routes depend on, as ``Annotated[..., Depends(...)]`` aliases.

The gateway's parts are built once, at start-up, into a :class:`Runtime` (the app's
typed state); routes never read ``request.app.state`` themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from actors.api import Hexbook
from engine.errors import InvalidRequest
from gateway.audit_trail import AuditTrail
from gateway.auth import Authenticator, Principal, authorize, client_address
from gateway.keys import KeyStore
from gateway.observe import Metrics
from gateway.problems import UnsupportedMediaType
from gateway.retention import Eraser
from gateway.schemas import IDEMPOTENCY_KEY
from gateway.service import BookingService
from gateway.settings import Settings

if TYPE_CHECKING:
    from actors.availability import AvailabilityStreams
    from actors.embedded_redis import EmbeddedRedis
    from gateway.index import AvailabilityIndex
    from gateway.interop.publish import SmartPublisher
    from gateway.interop.schedules import ImportScheduler
    from gateway.waitlist import Waitlists

__all__ = [
    "Admin",
    "Booker",
    "BookingToken",
    "Caller",
    "IdempotencyKey",
    "Operator",
    "Runtime",
    "RuntimeDep",
    "Service",
    "json_body",
    "runtime",
]

BOOKERS = ("booking-client", "operator")
ADMINS = ("provider-admin", "operator")
OPERATORS = ("operator",)


@dataclass
class Runtime:
    """Everything the routes use, built by the app's lifespan."""

    settings: Settings
    metrics: Metrics
    hexbook: Hexbook
    service: BookingService
    auth: Authenticator
    keys: KeyStore
    index: AvailabilityIndex
    stream: AvailabilityStreams
    smart: SmartPublisher
    imports: ImportScheduler
    redis_server: EmbeddedRedis | None = None  # the supervised embedded redis-server
    audit: AuditTrail | None = None
    eraser: Eraser | None = None
    waitlists: Waitlists | None = None
    feed_clients: int = 0
    pulse: object = None  # the dashboard's sampler (gateway.pages.live), made on first use
    trusted_proxies: frozenset[str] = frozenset()  # whose X-Forwarded-For is believed

    def __post_init__(self) -> None:
        self.trusted_proxies = frozenset(self.settings.trusted_proxies)


async def runtime(request: Request) -> Runtime:
    """The gateway's parts (set up by the lifespan)."""
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def _service(rt: RuntimeDep) -> BookingService:
    return rt.service


Service = Annotated[BookingService, Depends(_service)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `Bearer hbk_...`")


async def principal_of(request: Request, rt: Runtime) -> Principal:
    """The caller of ``request``, authenticated and rate-limited (the fast path asks the
    same :class:`~gateway.auth.Authenticator`)."""
    authorization = request.headers.getlist("authorization")
    if len(authorization) > 1:
        raise InvalidRequest("send one Authorization header")
    principal = await rt.auth.principal(
        authorization[0] if authorization else None,
        client_address(request.scope, rt.trusted_proxies),
    )
    request.scope.setdefault("state", {})["principal"] = principal
    return principal


def require(roles: tuple[str, ...] | None) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, who must hold a key with one of ``roles`` (``None``:
    anyone, anonymous callers too, limited per address)."""

    async def dependency(
        request: Request,
        rt: RuntimeDep,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        return authorize(await principal_of(request, rt), roles)

    return dependency


Caller = Annotated[Principal, Depends(require(None))]
Booker = Annotated[Principal, Depends(require(BOOKERS))]
Admin = Annotated[Principal, Depends(require(ADMINS))]
Operator = Annotated[Principal, Depends(require(OPERATORS))]


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type declares JSON (``application/json`` or ``*/*+json``)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def json_body(request: Request) -> None:
    """A dependency of routes with a body: it must be declared as JSON."""
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")


async def _idempotency_key(
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY,
            description="repeat a mutation safely: the same key with the same request "
            "returns the first answer; with another request it is a 422. Keys are the "
            "caller's own and kept 24 h.",
        ),
    ] = None,
) -> str | None:
    if len(request.headers.getlist("idempotency-key")) > 1:
        raise InvalidRequest("send one Idempotency-Key header")
    return key


IdempotencyKey = Annotated[str | None, Depends(_idempotency_key)]
BookingToken = Annotated[
    str | None,
    Header(
        alias="X-Booking-Token",
        max_length=200,
        description="the booking_token of the answer that created the booking",
    ),
]
