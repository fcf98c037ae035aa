"""``hexbook deliver`` and ``hexbook outbox``: a deliverer of notifications on its own,
and the outbox's state, dead letters and replay (docs/notifications.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

__all__ = ["add_parsers", "deliver", "outbox"]


def add_parsers(sub: Any, where: argparse.ArgumentParser) -> None:
    """The two commands' parsers, under ``sub`` (``where``: --data-dir, --redis-url)."""
    dl = sub.add_parser(
        "deliver",
        parents=[where],
        help="deliver notifications from the outbox (e-mail, signed webhook) until Ctrl-C",
        description=(
            "Read the notifications outbox as one more deliverer (every gateway runs one "
            "too, unless HEXBOOK_NOTIFY=false): e-mail through HEXBOOK_SMTP_URL where the "
            "patient gave an address, else a signed call of HEXBOOK_WEBHOOK_URL (with "
            "HEXBOOK_WEBHOOK_SECRET). Each notice is delivered once; a failed one is "
            "retried with back-off, then kept as a dead letter (`hexbook outbox dead`)."
        ),
    )
    dl.add_argument(
        "--claim-idle",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="take over a notice another deliverer left unfinished this long (default 300)",
    )
    ob = sub.add_parser(
        "outbox",
        help="the notifications outbox: its state, dead letters, replay",
        description="What waits to be delivered, what was given up on, and a replay.",
    )
    actions = ob.add_subparsers(dest="action", required=True)
    actions.add_parser("status", parents=[where], help="waiting, in delivery, dead, delivered")
    dead = actions.add_parser("dead", parents=[where], help="list the dead letters, oldest first")
    dead.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    rep = actions.add_parser(
        "replay", parents=[where], help="put dead letters back in the outbox, to be tried again"
    )
    rep.add_argument("ids", nargs="*", help="dead-letter ids (as `dead` shows)")
    rep.add_argument("--all", action="store_true", help="every dead letter")


def outbox(args: argparse.Namespace) -> int:
    from actors import outbox as box
    from gateway.cli_support import on_data

    if args.action == "replay" and not (args.ids or args.all):
        print("hexbook: name the dead letters to replay, or give --all", file=sys.stderr)
        return 2

    def work(control: Any) -> int:
        from actors.directory import servers_of

        clients = servers_of(control)  # its outbox and those of the shards' other servers
        if args.action == "status":
            s = box.stats_of(clients)
            print(f"waiting    {s['waiting']:>10,}   (oldest {s['oldest_seconds']:.1f} s)")
            print(f"in delivery{s['pending']:>10,}")
            print(f"dead       {s['dead']:>10,}")
            for name, value in sorted(s["counters"].items()):
                print(f"{name:11}{value:>10,}")
            return 0
        if args.action == "dead":
            rows = [r for c in clients for r in box.dead_letters(c, args.limit)][: args.limit]
            if not rows:
                print("no dead letters")
            for r in rows:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["at"]))
                print(f"{r['id']}  {when}Z  {r['kind']:20} tries={r['attempts']}  {r['reason']}")
            return 0
        moved = sum(box.replay(c, None if args.all else list(args.ids)) for c in clients)
        print(f"{moved} dead letter(s) back in the outbox")
        return 0 if moved or args.all else 1

    return on_data(args, work)


def deliver(args: argparse.Namespace) -> int:
    from actors.embedded_redis import RedisBinaryNotFound, RedisStartError, redis_endpoint
    from gateway.cli_support import embedded_redis_wanted, keyring_for
    from gateway.deliver import deliverer_of
    from gateway.settings import Settings

    settings = Settings(data_dir=args.data_dir)
    if not (settings.smtp_url or settings.webhook_url):
        print(
            "hexbook: no channel to deliver to: set HEXBOOK_SMTP_URL (e-mail) or "
            "HEXBOOK_WEBHOOK_URL with HEXBOOK_WEBHOOK_SECRET",
            file=sys.stderr,
        )
        return 2
    if args.claim_idle <= 0:
        print("hexbook: --claim-idle must be positive", file=sys.stderr)
        return 2
    ring = keyring_for(args, embedded=embedded_redis_wanted(args))

    async def run(url: str) -> None:
        import redis

        from actors.directory import Directory

        # The outbox of this Redis and of every Redis shards journal to (ADR 0025).
        urls = [url, *Directory(redis.Redis.from_url(url)).journal_urls()]
        async with contextlib.AsyncExitStack() as stack:
            ds = [await deliverer_of(settings, u, ring, stack) for u in urls]
            for d in ds:
                d.claim_idle_ms = int(args.claim_idle * 1000)
            d = ds[0]
            channels = [c.name for c in (d.email, d.webhook) if c is not None]
            print(
                f"hexbook deliver: {d.consumer} delivering by {', '.join(channels)} "
                f"from {len(ds)} outbox{'es' if len(ds) > 1 else ''}",
                flush=True,
            )
            await asyncio.gather(*(d.run() for d in ds))

    try:
        with (
            redis_endpoint(args.redis_url, args.data_dir, attach=True) as url,
            contextlib.suppress(KeyboardInterrupt),
        ):
            asyncio.run(run(url))
    except (RedisBinaryNotFound, RedisStartError, ValueError) as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 1
    return 0
