"""API keys: created, listed and revoked by operators, stored hashed in Redis.

A key reads ``hbk_<id>_<secret>``: the 8-character id names the key in listings and
logs; the secret (256 random bits) is shown once, at creation, and only its SHA-256 is
stored. Keys live in one Redis hash, ``hexbook:apikeys`` (id -> JSON record), so every
gateway process and the CLI see the same keys; a revocation reaches every gateway within
its cache time (``HEXBOOK_KEY_CACHE_SECONDS``).

Roles (docs/api.md): ``booking-client`` (search, holds, bookings), ``provider-admin``
(the schedules of the providers the key names), ``operator`` (everything).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass

import redis

from engine.errors import InvalidRequest, NotFound

__all__ = ["ROLES", "ApiKey", "KeyStore", "key_id_of"]

ROLES = ("booking-client", "provider-admin", "operator")
HASH = "hexbook:apikeys"
_FORMAT = re.compile(r"^hbk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else ``None``."""
    m = _FORMAT.match(key)
    return m.group(1) if m else None


@dataclass(frozen=True)
class ApiKey:
    """One key's record (never the key itself)."""

    key_id: str
    role: str
    name: str
    digest: str
    created_at: float
    providers: tuple[str, ...] = ()
    rate_per_second: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(self.digest, _digest(key))

    def may_admin(self, provider_id: str) -> bool:
        """Whether this key may change ``provider_id``'s schedule. Provider admins name
        their providers exactly or by a prefix ending in ``*``."""
        if self.role == "operator":
            return True
        if self.role != "provider-admin":
            return False
        return any(
            provider_id.startswith(p[:-1]) if p.endswith("*") else provider_id == p
            for p in self.providers
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "providers": list(self.providers)})

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        d = json.loads(raw)
        d["providers"] = tuple(d.get("providers", ()))
        return cls(**d)


class KeyStore:
    """The keys in Redis. Synchronous (redis-py); the gateway calls it off its loop."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(
        self,
        role: str,
        name: str,
        providers: tuple[str, ...] = (),
        rate_per_second: float | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key: ``(key, record)``. The key is not stored; show it once."""
        if role not in ROLES:
            raise InvalidRequest(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if role == "provider-admin" and not providers:
            raise InvalidRequest("a provider-admin key needs the providers it may change")
        if rate_per_second is not None and rate_per_second <= 0:
            raise InvalidRequest("rate_per_second must be positive")
        for _ in range(10):
            key_id = secrets.token_hex(4)
            key = f"hbk_{key_id}_{secrets.token_urlsafe(32)}"
            record = ApiKey(
                key_id=key_id,
                role=role,
                name=name,
                digest=_digest(key),
                created_at=time.time(),
                providers=tuple(providers),
                rate_per_second=rate_per_second,
            )
            if self.redis.hsetnx(HASH, key_id, record.to_json()):
                return key, record
        raise RuntimeError("could not find a free key id")  # pragma: no cover

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hget(HASH, key_id)
        return None if raw is None else ApiKey.from_json(raw)

    def lookup(self, key: str) -> ApiKey | None:
        """The active record of a presented key, or ``None`` (unknown, wrong secret,
        revoked)."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        record = self.get(key_id)
        if record is None or not record.active or not record.matches(key):
            return None
        return record

    def list(self) -> list[ApiKey]:
        raw = self.redis.hgetall(HASH)
        return sorted(
            (ApiKey.from_json(v) for v in raw.values()),
            key=lambda k: k.created_at,
        )

    def revoke(self, key_id: str) -> ApiKey:
        record = self.get(key_id)
        if record is None:
            raise NotFound(f"no key with id {key_id!r}")
        if record.active:
            d = json.loads(record.to_json())
            d["revoked_at"] = time.time()
            self.redis.hset(HASH, key_id, json.dumps(d))
            record = ApiKey.from_json(json.dumps(d))
        return record
