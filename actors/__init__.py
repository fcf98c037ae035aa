"""Hosting: shard actors on Ray, durability in Redis, and the embedded redis-server."""

from __future__ import annotations

from actors.embedded_redis import (
    EmbeddedRedis,
    FsyncPolicy,
    RedisBinaryNotFound,
    RedisStartError,
    find_redis_server,
    redis_endpoint,
)

__all__ = [
    "EmbeddedRedis",
    "FsyncPolicy",
    "RedisBinaryNotFound",
    "RedisStartError",
    "find_redis_server",
    "redis_endpoint",
]
