"""Who is calling, what they may do, and how fast: API keys, roles and rate limits.

``Authorization: Bearer <key>`` names a key of :mod:`gateway.keys`. Without a key a
caller is anonymous: search, the feed and provider reads stay open to them, limited per
client address; everything else needs a key of the right role. Key lookups are cached
for ``key_cache_seconds`` (a revocation takes at most that long to reach a gateway), so
the booking path does not pay a Redis round trip per request.

Rate limits are token buckets kept in Redis (:class:`SharedBuckets`), so that every
gateway of a deployment draws on the same bucket: per key (the key's own rate, else the
default) and per address for anonymous callers. A gateway takes a bucket's tokens a
lease at a time (a tenth of a second's worth, at least one), so a busy key costs a Redis
call per lease, not per request, and all gateways together get the rate (plus at most a
lease each). Over the limit is a 429 with the ``Retry-After`` the bucket needs (a
gateway remembers it and answers the next ones without asking). While Redis is away the
buckets of this process (:class:`TokenBuckets`) hold the same rates. A gateway whose
shards are saturated says 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.types import Scope

from engine.errors import HexbookError, Unavailable
from gateway.keys import ApiKey, KeyStore

__all__ = [
    "Authenticator",
    "Forbidden",
    "Principal",
    "RateLimited",
    "SharedBuckets",
    "TokenBuckets",
    "Unauthorized",
    "authorize",
    "client_address",
    "retry_after_seconds",
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


log = logging.getLogger("hexbook.auth")
BUCKET_PREFIX = "hexbook:rate:"
LEASE_SECONDS = 0.1  # a lease is this much of a bucket's rate (at least one token)
LEASE_LIFE = 1.0  # tokens of a lease not used within this long are dropped
# A bucket in Redis: refilled at ARGV[1] a second up to ARGV[2], then up to ARGV[3]
# tokens taken. Redis's clock: one time for every gateway, on any machine.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local grant = math.min(want, math.floor(tokens))
tokens = tokens - grant
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if grant > 0 then return {grant, '0'} end
return {0, tostring((1 - tokens) / rate)}
"""


@dataclass(slots=True)
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    denied_until: float = 0.0
    waiting: int = 0


class SharedBuckets:
    """Token buckets in Redis, shared by every gateway: ``rate`` tokens a second, bursts
    up to ``2 * rate`` (as :class:`TokenBuckets`), taken here a lease at a time."""

    def __init__(self, client: aioredis.Redis, max_entries: int = 100_000) -> None:
        self.redis = client
        self._script = client.register_script(_TAKE)
        self._leases: dict[str, _Lease] = {}
        self._asks: dict[str, asyncio.Future[None]] = {}
        self.local = TokenBuckets(max_entries)  # while Redis is away
        self.max_entries = max_entries
        self.asked = 0  # Redis calls made (a lease each)

    async def take(self, name: str, rate: float) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is there."""
        lease = self._leases.get(name)
        if lease is None:
            if len(self._leases) >= self.max_entries:
                self._leases.clear()
            lease = self._leases[name] = _Lease()
        for _ in range(3):
            now = time.monotonic()
            if lease.tokens >= 1 and lease.expires > now:
                lease.tokens -= 1
                return 0.0
            if lease.denied_until > now:
                return lease.denied_until - now
            lease.waiting += 1
            try:
                ask = self._asks.get(name)
                if ask is None:
                    ask = asyncio.ensure_future(self._ask(name, rate, lease))
                    self._asks[name] = ask
                    ask.add_done_callback(lambda _: self._asks.pop(name, None))
                await asyncio.shield(ask)
            except RedisError as exc:
                log.warning("rate limits held in this gateway (Redis: %s)", exc)
                return self.local.take(name, rate)
            finally:
                lease.waiting -= 1
        return 1.0 / rate  # others took the lease first: come back soon

    async def _ask(self, name: str, rate: float, lease: _Lease) -> None:
        want = max(1, int(rate * LEASE_SECONDS), lease.waiting)
        burst = max(2.0 * rate, 1.0)
        self.asked += 1
        got: Any = await self._script(keys=[BUCKET_PREFIX + name], args=[rate, burst, want])
        granted, wait = int(got[0]), float(got[1])
        now = time.monotonic()
        if granted:
            lease.tokens, lease.expires, lease.denied_until = granted, now + LEASE_LIFE, 0.0
        else:
            lease.tokens, lease.denied_until = 0, now + wait


class Authenticator:
    """Key lookups (cached) and rate limits for one gateway process: the one place that
    turns an ``Authorization`` header into a :class:`Principal` (the FastAPI routes and
    the fast path both ask here)."""

    def __init__(
        self,
        store: KeyStore,
        buckets: SharedBuckets,
        *,
        cache_seconds: float,
        rate_per_key: float,
        rate_per_address: float,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.rate_per_key = rate_per_key
        self.rate_per_address = rate_per_address
        self.buckets = buckets
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._lookups: dict[str, asyncio.Future[ApiKey | None]] = {}

    def cached(self, presented: str) -> tuple[ApiKey | None, float] | None:
        """The cache's (record, until) of a presented key while it is fresh, else ``None``
        (a record of ``None``: a key known to be unknown or revoked)."""
        hit = self._cache.get(presented)
        return hit if hit is not None and hit[1] > time.monotonic() else None

    async def key(self, presented: str) -> ApiKey | None:
        """The active record of a presented key (cached), or ``None``. When the cache
        runs out under load, the requests of that moment share one Redis lookup."""
        if (hit := self.cached(presented)) is not None:
            return hit[0]
        now = time.monotonic()
        lookup = self._lookups.get(presented)
        if lookup is None:
            lookup = asyncio.ensure_future(asyncio.to_thread(self.store.lookup, presented))
            self._lookups[presented] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(presented, None))
        try:
            record = await asyncio.shield(lookup)
        except RedisError as exc:
            raise Unavailable("API keys cannot be checked now (Redis unreachable); retry") from exc
        if len(self._cache) >= 10_000:
            self._cache.clear()
        self._cache[presented] = (record, now + self.cache_seconds)
        return record

    async def principal(self, authorization: str | None, address: str) -> Principal:
        """The caller presenting ``authorization`` (the header's value, or ``None``) from
        ``address``, rate-limited. A key that is presented must be valid."""
        if authorization is None:
            principal = Principal(None, address)
        else:
            scheme, _, key = authorization.strip().partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key or " " in key:
                raise Unauthorized("the Authorization header must read 'Bearer <api key>'")
            hit = self.cached(key)  # a cached key without a coroutine: the common case
            record = hit[0] if hit is not None else await self.key(key)
            if record is None:
                raise Unauthorized("unknown or revoked API key")
            principal = Principal(record, address)
        await self.limit(principal)
        return principal

    async def limit(self, principal: Principal) -> None:
        """Take a token of the caller's bucket, or :class:`RateLimited`."""
        if principal.key is not None:
            rate = principal.key.rate_per_second or self.rate_per_key
        else:
            rate = self.rate_per_address
        wait = await self.buckets.take(principal.name, rate)
        if wait:
            raise RateLimited(
                f"rate limit of {rate:g} requests/s for {principal.name} reached; "
                f"retry in {wait:.2f} s",
                retry_after=wait,
            )


def authorize(principal: Principal, roles: tuple[str, ...] | None) -> Principal:
    """``principal`` if its role is one of ``roles`` (``None``: anyone, anonymous too)."""
    if roles is None:
        return principal
    if principal.key is None:
        raise Unauthorized(f"this needs an API key ({' or '.join(roles)})")
    if principal.role not in roles:
        raise Forbidden(f"a {principal.role} key may not do this ({' or '.join(roles)})")
    return principal


def client_address(scope: Scope, trusted_proxies: frozenset[str]) -> str:
    """The address a request came from. ``X-Forwarded-For`` counts only when the peer is
    one of ``trusted_proxies`` (none by default): then the nearest address that is not a
    trusted proxy, reading the header from the right."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted_proxies or peer not in trusted_proxies:
        return peer
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    forwarded = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
    hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop
    return peer


def retry_after_seconds(seconds: float) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
