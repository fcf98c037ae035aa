"""``hexbook``: run hexbook.

hexbook up --demo          # local Ray + embedded redis-server + shards + gateway,
                           # with a demo city; Ctrl-C stops it, data/ keeps bookings
hexbook up --redis-url redis://... --ray-address ray://...   # against a cluster
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hexbook",
        description="hexbook: real-time availability and booking for appointment launches.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up",
        help="start Ray, Redis, the shards and the HTTP gateway",
        description=(
            "Start hexbook: a local Ray (or --ray-address), a redis-server of its own in "
            "--data-dir (or --redis-url), the shard actors and the HTTP gateway. Ctrl-C "
            "stops everything cleanly; the data folder keeps every booking for the next start."
        ),
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="provision a demo city (about 1,500 sites over Chicago, 14 days of "
        "15-minute slots) unless the data already holds one",
    )
    up.add_argument("--sites", type=int, default=1500, help="demo city size (default 1500)")
    up.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="folder of the embedded redis-server (default ./data)",
    )
    up.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="use this Redis instead of starting one (default: $REDIS_URL)",
    )
    up.add_argument(
        "--ray-address", default=None, help="join this Ray cluster instead of starting a local Ray"
    )
    up.add_argument(
        "--shards",
        type=int,
        default=2,
        help="shard actors for a new deployment (default 2, for 2 cores)",
    )
    up.add_argument(
        "--fsync",
        choices=["always", "everysec"],
        default="always",
        help="embedded Redis AOF fsync: always (default, no acknowledged booking "
        "lost) or everysec (faster; may lose up to 1 s on a crash)",
    )
    return parser


def _progress(total: int) -> object:
    def show(done: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        print(
            f"\r  provisioning [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
            end=end,
            flush=True,
        )

    return show


def up(args: argparse.Namespace) -> int:
    import ray
    import uvicorn

    from actors.api import Hexbook
    from actors.embedded_redis import RedisBinaryNotFound, RedisStartError, redis_endpoint
    from gateway.app import create_app
    from gateway.demo import demo_city
    from gateway.settings import Settings

    if not 1 <= args.port <= 65535 or args.sites < 1 or args.shards < 1:
        print("hexbook: --port must be 1-65535, --sites and --shards at least 1", file=sys.stderr)
        return 2
    try:
        with redis_endpoint(args.redis_url, args.data_dir, args.fsync) as url:
            where = args.redis_url or f"embedded redis-server in {args.data_dir.resolve()}"
            print(f"hexbook: Redis: {where}")
            hb = Hexbook.connect(url, ray_address=args.ray_address, shards=args.shards)
            try:
                if args.demo:
                    existing = len(hb.directory.providers())
                    if existing:
                        print(
                            f"hexbook: demo city already there ({existing} providers); "
                            "its bookings are kept"
                        )
                    else:
                        city = demo_city(args.sites)
                        today = datetime.now(ZoneInfo("America/Chicago")).date()
                        print(
                            f"hexbook: provisioning {len(city)} demo sites, 14 days of "
                            f"15-minute slots from {today.isoformat()}"
                        )
                        hb.provision_many(city, today, 14, 15, progress=_progress(len(city)))  # type: ignore[arg-type]
                settings = Settings(
                    redis_url=url,
                    ray_address=args.ray_address,
                    data_dir=args.data_dir,
                    shards=args.shards,
                )
                app = create_app(settings, hexbook=hb)
                base = f"http://{args.host}:{args.port}"
                print(
                    f"hexbook: serving {base}\n"
                    f"  API docs:  {base}/docs\n"
                    f"  OpenAPI:   {base}/openapi.json\n"
                    f"  try:       curl '{base}/v1/providers/chi-0000'\n"
                    "  API keys arrive with the gateway's auth; until then the API is open\n"
                    "  Ctrl-C stops hexbook; bookings stay in the data folder",
                    flush=True,
                )
                uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
            finally:
                hb.close()
                ray.shutdown()
    except (RedisBinaryNotFound, RedisStartError) as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 1
    print("hexbook: stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "up":
        return up(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
