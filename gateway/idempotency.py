"""``Idempotency-Key`` scoped per caller, across every calendar, and booking tokens that a
repeated request can show again.

A calendar remembers the keys of the commands it applied (:mod:`engine.calendar`), but
one key could otherwise be used once per calendar. So before a keyed mutation reaches a
shard, the gateway *claims* the key for the caller: ``SET NX`` of
``hexbook:idempotency:<caller>:<key>`` to a fingerprint of the request (the verb and
what the client chose), kept ``ttl_seconds`` (24 h). The same key with the same request
goes on (the calendar answers it with its first result); with another request it is a
422 ``idempotency_conflict``, whichever provider it names. Claims made in one turn of
the event loop go to Redis in one script call, so a burst pays one round trip.

A booking's token is shown once, and only its SHA-256 is stored. For a confirm sent with
an Idempotency-Key the token is derived, ``HMAC-SHA256(secret, caller:key)``, so a repeat
of that request (its first answer lost to a timeout or a shard crash) computes the same
token and returns it again; nothing stores the token. The secret comes from
``HEXBOOK_TOKEN_SECRET`` or, by default, is made once and kept in Redis so that every
gateway of a deployment derives the same tokens (docs/adr/0013-gateway-contract.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.api import new_secret
from engine.errors import IdempotencyConflict, Unavailable
from gateway.auth import Principal

__all__ = ["Idempotency", "ScopedKey", "token_secret"]

SECRET_KEY = "hexbook:secrets:booking-token"
_PREFIX = "hexbook:idempotency:"
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local fingerprint = ARGV[i + 1]
  if redis.call('SET', key, fingerprint, 'NX', 'EX', ARGV[1]) then
    out[i] = fingerprint
  else
    out[i] = redis.call('GET', key) or fingerprint
  end
end
return out
"""


def token_secret(client: redis.Redis, configured: str | None) -> bytes:
    """The secret booking tokens are derived with: ``configured``, or the deployment's
    own, made at first use and kept in Redis."""
    if configured:
        return configured.encode()
    client.set(SECRET_KEY, secrets.token_urlsafe(32), nx=True)
    raw: Any = client.get(SECRET_KEY)
    return bytes(raw)


class ScopedKey(NamedTuple):
    """The key a command carries to its calendar; ``repeatable``: the client chose it."""

    key: str
    repeatable: bool

    @property
    def command(self) -> str | None:
        """The key the calendar remembers: the client's, who may send it again. A fresh
        key nobody can repeat is not sent: its entry (the event and its result) would
        only fill the calendar and every snapshot (1.2 million of them were four fifths
        of a benchmark city's 520 MB snapshot, and a snapshot's copy held the writer)."""
        return self.key if self.repeatable else None


class Idempotency:
    """Claims of Idempotency-Keys (batched per loop turn) and booking tokens."""

    def __init__(self, redis_url: str, secret: bytes, ttl_seconds: int = 86_400) -> None:
        self.redis = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.ttl_seconds = ttl_seconds
        self._secret = secret
        self._script = self.redis.register_script(_CLAIM)
        self._pending: list[tuple[str, str, asyncio.Future[str]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def scope(self, caller: Principal, key: str | None, *request: str | int) -> ScopedKey:
        """The command key for ``caller``'s ``key`` with this ``request`` (the verb and the
        fields the client chose), once the key is claimed for it; a fresh random key when
        the client gave none."""
        if key is None:
            return ScopedKey(new_secret(), False)
        scoped = f"{caller.name}:{key}"
        fingerprint = hashlib.sha256("\x1f".join(map(str, request)).encode()).hexdigest()[:32]
        if await self._claim(scoped, fingerprint) != fingerprint:
            raise IdempotencyConflict(key)
        return ScopedKey(scoped, True)

    def token(self, scoped: ScopedKey) -> str:
        """A booking token (128 bits, base64url): derived from a client's key, so that a
        repeat shows the same one; random otherwise."""
        if not scoped.repeatable:
            return new_secret()
        mac = hmac.new(self._secret, scoped.key.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode("ascii")

    def _claim(self, scoped: str, fingerprint: str) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((scoped, fingerprint, fut))
        return fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, str, asyncio.Future[str]]]) -> None:
        try:
            held: Any = await self._script(
                keys=[_PREFIX + k for k, _, _ in batch],
                args=[self.ttl_seconds, *(f for _, f, _ in batch)],
            )
        except RedisError as exc:
            error = Unavailable(f"Idempotency-Keys cannot be checked now ({exc}); retry shortly")
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            return
        for (_, _, fut), value in zip(batch, held, strict=True):
            if not fut.done():
                fut.set_result(value.decode() if isinstance(value, bytes) else str(value))

    async def close(self) -> None:
        await self.redis.aclose()
