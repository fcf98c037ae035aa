"""The directory: which shard hosts which H3 cell and which provider, kept in Redis so
every process connected to the same Redis (gateway workers, CLIs) sees one map.

Keys: ``hexbook:directory:meta`` (``resolution``, ``shards``: comma-separated names),
``hexbook:directory:cells`` (cell -> shard), ``hexbook:directory:providers``
(provider id -> shard), ``hexbook:directory:dedicated`` (provider id -> its own shard),
``hexbook:directory:journals`` (shard -> the URL of the Redis it journals to, when not
this one: ADR 0025).

A cell is assigned to a shard the first time a provider lands in it (by a stable hash
of the cell, so neighbouring processes agree without coordination; ``HSETNX`` makes
the first writer win). A provider lives on its cell's shard unless it is given a shard
of its own (a stadium site).
"""

from __future__ import annotations

import os
import zlib

import redis

from engine.errors import InvalidRequest, ProviderNotFound
from engine.geo import DEFAULT_RESOLUTION
from engine.provider import Provider

__all__ = ["Directory", "default_shards", "home_shard", "servers_of"]

META = "hexbook:directory:meta"
CELLS = "hexbook:directory:cells"
PROVIDERS = "hexbook:directory:providers"
DEDICATED = "hexbook:directory:dedicated"
JOURNALS = "hexbook:directory:journals"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def default_shards() -> int:
    """Shards for a new single-machine deployment: one per core this process may use,
    less the one the gateway keeps busy (at least one). ADR 0012 has the measurements."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


def home_shard(cell: str, count: int) -> int:
    """Which of ``count`` shards a cell goes to on first use: a stable hash of the cell,
    so every process (and the capacity planner) agrees without asking."""
    return zlib.crc32(cell.encode()) % count


def servers_of(client: redis.Redis) -> list[redis.Redis]:
    """``client`` (a deployment's Redis) and a client of every other Redis its directory
    has shards journal to: where journals, archives and outboxes are (ADR 0025)."""
    return [client, *map(redis.Redis.from_url, Directory(client).journal_urls())]


class Directory:
    """Cells and providers mapped to shards, stored in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def configure(
        self,
        shards: list[str],
        resolution: int = DEFAULT_RESOLUTION,
        journals: list[str] | None = None,
    ) -> None:
        """Set the shard list and cell resolution unless already set (first one wins).

        ``journals``: Redis URLs besides this one for shards to journal to; the shards of
        a new directory are spread over this Redis and them in turn (shard-0 here,
        shard-1 on the first of them, ...). A directory set already keeps its map."""
        if not shards or not 0 <= resolution <= 15:
            raise InvalidRequest("need at least one shard and an H3 resolution of 0 to 15")
        if journals and not self.redis.hexists(META, "shards"):
            # The map before the list: a start cut short between the two leaves a map
            # that the next start completes, never a list without its map.
            servers: list[str | None] = [None, *journals]
            for i, shard in enumerate(shards):
                url = servers[i % len(servers)]
                if url is not None:
                    self.redis.hsetnx(JOURNALS, shard, url)
        self.redis.hsetnx(META, "shards", ",".join(shards))
        self.redis.hsetnx(META, "resolution", str(resolution))

    def journal_of(self, shard: str) -> str | None:
        """The URL of the Redis ``shard`` journals to; ``None``: this one."""
        raw = self.redis.hget(JOURNALS, shard)
        return None if raw is None else _s(raw)

    def journals(self) -> dict[str, str]:
        """Every shard that journals to another Redis, and that Redis's URL."""
        return {_s(k): _s(v) for k, v in self.redis.hgetall(JOURNALS).items()}

    def journal_urls(self) -> list[str]:
        """The other Redis servers shards journal to (each once, in a stable order)."""
        return sorted(set(self.journals().values()))

    def place_journal(self, shard: str) -> str | None:
        """Give a new shard (a dedicated one) the journal server with the fewest shards
        (this Redis on a tie); returns its URL, ``None`` for this one."""
        known = self.journal_of(shard)
        if known is not None:
            return known
        mapped = self.journals()
        load: dict[str | None, int] = {None: 0, **dict.fromkeys(mapped.values(), 0)}
        for name in self.shards:
            if name != shard:
                load[mapped.get(name)] = load.get(mapped.get(name), 0) + 1
        choice = min(load, key=lambda url: (load[url], url is not None, url or ""))
        if choice is not None:
            self.redis.hsetnx(JOURNALS, shard, choice)
            return self.journal_of(shard)
        return None

    @property
    def shards(self) -> list[str]:
        raw = self.redis.hget(META, "shards")
        return _s(raw).split(",") if raw else []

    @property
    def resolution(self) -> int:
        raw = self.redis.hget(META, "resolution")
        return int(raw) if raw else DEFAULT_RESOLUTION

    def add_shard(self, shard: str) -> None:
        """Append a shard name to the list (e.g. a dedicated one)."""
        if shard not in self.shards:
            self.redis.hset(META, "shards", ",".join([*self.shards, shard]))

    def shard_for_cell(self, cell: str) -> str:
        """The shard of ``cell``, assigning one on first use."""
        current = self.redis.hget(CELLS, cell)
        if current is not None:
            return _s(current)
        shards = [s for s in self.shards if not s.startswith("dedicated-")]
        if not shards:
            raise InvalidRequest("the directory has no shards; configure it first")
        choice = shards[home_shard(cell, len(shards))]
        self.redis.hsetnx(CELLS, cell, choice)
        won = self.redis.hget(CELLS, cell)  # another process may have set it first
        return choice if won is None else _s(won)

    def place(self, provider: Provider) -> str:
        """The shard that hosts ``provider`` (recording it on first placement)."""
        dedicated = self.redis.hget(DEDICATED, provider.provider_id)
        if dedicated is not None:
            shard = _s(dedicated)
        else:
            known = self.redis.hget(PROVIDERS, provider.provider_id)
            if known is not None:
                return _s(known)
            shard = self.shard_for_cell(provider.cell(self.resolution))
        self.redis.hset(PROVIDERS, provider.provider_id, shard)
        return shard

    def has_provider(self, provider_id: str) -> bool:
        """Whether ``provider_id`` has been placed on a shard."""
        return bool(self.redis.hexists(PROVIDERS, provider_id))

    def shard_of(self, provider_id: str) -> str:
        """The shard hosting ``provider_id``, or :class:`ProviderNotFound`."""
        shard = self.redis.hget(PROVIDERS, provider_id)
        if shard is None:
            raise ProviderNotFound(provider_id)
        return _s(shard)

    def dedicate(self, provider_id: str) -> str:
        """Give a provider a shard of its own; returns that shard's name."""
        shard = f"dedicated-{provider_id}"
        self.redis.hset(DEDICATED, provider_id, shard)
        self.add_shard(shard)
        self.place_journal(shard)
        return shard

    def set_provider_shard(self, provider_id: str, shard: str) -> None:
        self.redis.hset(PROVIDERS, provider_id, shard)

    def assign_cell(self, cell: str, shard: str) -> None:
        """Map ``cell`` to ``shard`` (moving the cell's providers is the caller's job)."""
        if shard not in self.shards:
            raise InvalidRequest(f"unknown shard {shard!r}; shards are {self.shards}")
        self.redis.hset(CELLS, cell, shard)

    def cells(self) -> dict[str, str]:
        """The whole cell map."""
        return {_s(k): _s(v) for k, v in self.redis.hgetall(CELLS).items()}

    def dedicated(self) -> dict[str, str]:
        """Every provider given a shard of its own, and that shard."""
        return {_s(k): _s(v) for k, v in self.redis.hgetall(DEDICATED).items()}

    def providers(self) -> dict[str, str]:
        """Every provider and its shard."""
        return {_s(k): _s(v) for k, v in self.redis.hgetall(PROVIDERS).items()}
