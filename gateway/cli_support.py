"""What the command lines share (hexbook's CLI and its sub-commands' modules): the
data folder's Redis, its data keys, and a failure said in one line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["embedded_redis_wanted", "keyring_for", "on_data"]


def keyring_for(args: argparse.Namespace, *, embedded: bool, create: bool = False) -> Any:
    """The data keys for a command given --data-dir (and the HEXBOOK_DATA_KEYS* variables)."""
    from gateway.settings import Settings, data_keyring

    return data_keyring(Settings(data_dir=args.data_dir), embedded=embedded, create=create)


def embedded_redis_wanted(args: argparse.Namespace) -> bool:
    """Whether a command works on the data folder's embedded Redis (no Redis URL given)."""
    return not (getattr(args, "redis_url", None) or os.environ.get("REDIS_URL"))


def on_data(args: argparse.Namespace, work: Any) -> int:
    """``work(client)`` on the Redis of --data-dir (a running stack's, or started on its
    data) or --redis-url; its exit status, or each failure said in one line."""
    import redis

    from actors.embedded_redis import (
        NoHexbookData,
        RedisBinaryNotFound,
        RedisStartError,
        redis_endpoint,
    )
    from engine.errors import HexbookError

    try:
        with redis_endpoint(args.redis_url, args.data_dir, attach=True) as url:
            client = redis.Redis.from_url(url)
            try:
                return int(work(client))
            finally:
                client.close()
    except NoHexbookData as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 2
    except (RedisBinaryNotFound, RedisStartError) as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 1
    except HexbookError as exc:
        print(f"hexbook: {exc.message}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"hexbook: Redis: {exc}", file=sys.stderr)
        return 1
