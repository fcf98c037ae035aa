"""Who is calling, what they may do, and how fast: API keys, roles and rate limits.

``Authorization: Bearer <key>`` names a key of :mod:`gateway.keys`. Without a key a
caller is anonymous: search, the feed and provider reads stay open to them, limited per
client address; everything else needs a key of the right role. Key lookups are cached
for ``key_cache_seconds`` (a revocation takes at most that long to reach a gateway), so
the booking path does not pay a Redis round trip per request.

Rate limits are token buckets in this process: per key (the key's own rate, else the
default) and per address for anonymous callers. Over the limit is a 429 with the
``Retry-After`` the bucket needs; a gateway whose shards are saturated says 503.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.errors import HexbookError
from gateway.keys import ApiKey, KeyStore

__all__ = [
    "Admin",
    "Authenticator",
    "Booker",
    "Caller",
    "Forbidden",
    "Operator",
    "Principal",
    "RateLimited",
    "TokenBuckets",
    "Unauthorized",
    "current",
    "require",
]


class Unauthorized(HexbookError):
    """No valid API key where one is needed (401)."""

    code = "unauthorized"


class Forbidden(HexbookError):
    """A valid key whose role may not do this (403)."""

    code = "forbidden"


class RateLimited(HexbookError):
    """Too many requests from this key or address (429, with ``Retry-After``)."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a key, or an anonymous address."""

    key: ApiKey | None
    address: str

    @property
    def role(self) -> str:
        return self.key.role if self.key else "anonymous"

    @property
    def name(self) -> str:
        """How logs name the caller: the key id (never the secret) or the address."""
        return f"key:{self.key.key_id}" if self.key else f"addr:{self.address}"


class TokenBuckets:
    """Token buckets by name: ``rate`` tokens a second, bursts up to ``2 * rate``."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self.max_entries = max_entries

    def take(self, name: str, rate: float, now: float | None = None) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is there."""
        now = time.monotonic() if now is None else now
        burst = max(2.0 * rate, 1.0)
        tokens, last = self._buckets.get(name, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0
        if len(self._buckets) >= self.max_entries:  # forget idle callers, keep memory flat
            self._buckets.clear()
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / rate


class Authenticator:
    """Key lookups (cached) and rate limits for one gateway process."""

    def __init__(
        self,
        store: KeyStore,
        *,
        cache_seconds: float,
        rate_per_key: float,
        rate_per_address: float,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.rate_per_key = rate_per_key
        self.rate_per_address = rate_per_address
        self.buckets = TokenBuckets()
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}

    async def key(self, presented: str) -> ApiKey | None:
        now = time.monotonic()
        hit = self._cache.get(presented)
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await asyncio.to_thread(self.store.lookup, presented)
        if len(self._cache) >= 10_000:
            self._cache.clear()
        self._cache[presented] = (record, now + self.cache_seconds)
        return record

    def limit(self, principal: Principal) -> None:
        if principal.key is not None:
            rate = principal.key.rate_per_second or self.rate_per_key
        else:
            rate = self.rate_per_address
        wait = self.buckets.take(principal.name, rate)
        if wait:
            raise RateLimited(
                f"rate limit of {rate:g} requests/s for {principal.name} reached; "
                f"retry in {wait:.2f} s",
                retry_after=wait,
            )


_bearer = HTTPBearer(auto_error=False, description="an API key: `Bearer hbk_...`")


async def _principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller of this request, rate-limited. A key that is presented must be valid."""
    auth: Authenticator = request.app.state.auth
    address = request.client.host if request.client else "unknown"
    if credentials is None:
        if request.headers.get("authorization"):
            raise Unauthorized("the Authorization header must read 'Bearer <api key>'")
        principal = Principal(None, address)
    else:
        record = await auth.key(credentials.credentials)
        if record is None:
            raise Unauthorized("unknown or revoked API key")
        principal = Principal(record, address)
    auth.limit(principal)
    request.state.principal = principal
    return principal


async def current(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """A dependency: the caller, anonymous or not (limited per key or per address)."""
    return await _principal(request, credentials)


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller must hold a key with one of ``roles``. (One level of
    dependencies, not two: FastAPI's dependency solving is a visible share of a hold.)"""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        principal = await _principal(request, credentials)
        if principal.key is None:
            raise Unauthorized(f"this needs an API key ({' or '.join(roles)})")
        if principal.role not in roles:
            raise Forbidden(f"a {principal.role} key may not do this ({' or '.join(roles)})")
        return principal

    return dependency


def retry_after_seconds(seconds: float) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))


Caller = Annotated[Principal, Depends(current)]
Booker = Annotated[Principal, Depends(require("booking-client", "operator"))]
Admin = Annotated[Principal, Depends(require("provider-admin", "operator"))]
Operator = Annotated[Principal, Depends(require("operator"))]
