"""Eligibility rules and series templates, kept in Redis.

Each rule (``service``, or ``service@provider`` for one provider) has numbered versions:
``hexbook:rules:{name}`` is a hash of version -> rule, with ``current`` naming the one
in force and ``seq`` the last number given. A version is never changed or deleted (the
audit checks every booking against the version recorded with it); publishing is one
Lua script, so two operators publishing at once get two versions and the later one is
in force. Series templates are one hash, service -> template.

Reads are a few small HGETs; the gateway keeps them for a second
(:class:`PolicyCache`), so a new version is in force everywhere within a second of its
publication, and at once at the gateway that published it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import cachetools
import msgspec
import redis.asyncio as aioredis

from engine.eligibility import Rule, rule_name, validate_rule
from engine.series import SeriesTemplate, validate_template

__all__ = [
    "PolicyCache",
    "PolicyStore",
    "decode_rule",
    "rules_key",
]

TEMPLATES_KEY = "hexbook:series-templates"
_enc = msgspec.msgpack.Encoder()
_rule_dec = msgspec.msgpack.Decoder(Rule)
_template_dec = msgspec.msgpack.Decoder(SeriesTemplate)

_PUBLISH = """
local v = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], v, ARGV[1], 'current', v)
redis.call('SADD', KEYS[2], ARGV[2])
return v
"""
NAMES_KEY = "hexbook:rule-names"  # every rule that has a version: one read says "none here"


def rules_key(name: str) -> str:
    return f"hexbook:rules:{name}"


def decode_rule(raw: bytes, version: int) -> Rule:
    """A stored version (stored without its number, which is its field)."""
    return msgspec.structs.replace(_rule_dec.decode(raw), version=version)


class PolicyStore:
    """Rules and templates in Redis (async)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._publish = client.register_script(_PUBLISH)

    async def publish(self, rule: Rule, now: int | None = None) -> Rule:
        """Store ``rule`` as the next version of its name, in force from now."""
        validate_rule(rule)
        at = int(time.time()) if now is None else now
        body = _enc.encode(msgspec.structs.replace(rule, version=0, published_at=at))
        name = rule_name(rule)
        version = int(await self._publish(keys=[rules_key(name), NAMES_KEY], args=[body, name]))
        return msgspec.structs.replace(rule, version=version, published_at=at)

    async def version(self, name: str, version: int) -> Rule | None:
        raw: Any = await self.redis.hget(rules_key(name), str(version))
        if raw is None:
            return None
        return decode_rule(raw, version)

    async def history(self, name: str) -> list[Rule]:
        """Every version of ``name``, oldest first."""
        raw: Any = await self.redis.hgetall(rules_key(name))
        out = [decode_rule(v, int(k)) for k, v in raw.items() if k.isdigit()]
        return sorted(out, key=lambda r: r.version)

    async def names(self) -> set[str]:
        """The names of every rule published."""
        raw: Any = await self.redis.smembers(NAMES_KEY)
        return {n.decode() if isinstance(n, bytes) else str(n) for n in raw}

    async def in_force(self, name: str) -> Rule | None:
        """The version of ``name`` in force, if it has one."""
        raw: Any = await self.redis.hget(rules_key(name), "current")
        return None if raw is None else await self.version(name, int(raw))

    async def current(self, service: str, provider_id: str) -> Rule | None:
        """The rule in force for ``provider_id``'s ``service``: the provider's own if it
        has one, else the service's; ``None`` if neither."""
        for name in (f"{service}@{provider_id}", service):
            raw = await self.redis.hget(rules_key(name), "current")
            if raw is not None:
                rule = await self.version(name, int(raw))
                if rule is not None:
                    return rule
        return None

    async def set_template(self, template: SeriesTemplate) -> None:
        validate_template(template)
        await self.redis.hset(TEMPLATES_KEY, template.service, _enc.encode(template))

    async def template(self, service: str) -> SeriesTemplate | None:
        raw: Any = await self.redis.hget(TEMPLATES_KEY, service)
        return None if raw is None else _template_dec.decode(raw)


class PolicyCache:
    """The store's answers kept for ``ttl`` seconds (one gateway's view). Which rules
    exist is one read per ``ttl``, so a service without rules costs no Redis call per
    hold; a rule in force, one read per name per ``ttl``."""

    def __init__(self, store: PolicyStore, ttl: float = 1.0) -> None:
        self.store = store
        self.ttl = ttl
        self._names: set[str] = set()
        self._names_at = -float("inf")
        self._names_lock = asyncio.Lock()
        self._rules: cachetools.TTLCache[str, Rule | None] = cachetools.TTLCache(
            maxsize=100_000, ttl=ttl
        )
        self._templates: cachetools.TTLCache[str, SeriesTemplate | None] = cachetools.TTLCache(
            maxsize=1_000, ttl=ttl
        )

    async def _known(self) -> set[str]:
        if time.monotonic() - self._names_at >= self.ttl:
            async with self._names_lock:  # one read for everyone waiting
                if time.monotonic() - self._names_at >= self.ttl:
                    self._names = await self.store.names()
                    self._names_at = time.monotonic()
        return self._names

    async def _named(self, name: str) -> Rule | None:
        try:
            return self._rules[name]
        except KeyError:
            rule = self._rules[name] = await self.store.in_force(name)
            return rule

    async def rule(self, service: str, provider_id: str) -> Rule | None:
        """The rule in force for ``provider_id``'s ``service`` (its own, else the
        service's), or ``None``."""
        names = await self._known()
        if not names:
            return None
        own = f"{service}@{provider_id}"
        if own in names and (rule := await self._named(own)) is not None:
            return rule
        return await self._named(service) if service in names else None

    async def template(self, service: str) -> SeriesTemplate | None:
        try:
            return self._templates[service]
        except KeyError:
            t = self._templates[service] = await self.store.template(service)
            return t

    async def rule_for(self, provider_id: str, service: str) -> Rule | None:
        """:meth:`rule` with the arguments as :class:`actors.series.SeriesBook` passes
        them (``RuleFor``: provider, then service)."""
        return await self.rule(service, provider_id)

    def forget(self) -> None:
        """Drop what is kept (after this gateway published something)."""
        self._names_at = -float("inf")
        self._rules.clear()
        self._templates.clear()
