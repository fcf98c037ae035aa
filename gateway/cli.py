"""``hexbook``: run hexbook.

hexbook up --demo          # local Ray + embedded redis-server + shards + gateway,
                           # with a demo city; Ctrl-C stops it, data/ keeps bookings
hexbook up --redis-url redis://... --ray-address ray://...   # against a cluster
hexbook up --gateways 2    # two gateway processes on one port
hexbook gateway --redis-url redis://... --ray-address HOST:6379   # one more gateway
hexbook keys create --role operator --name alice   # API keys (shown once)
hexbook keys list
hexbook keys revoke KEY_ID
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway import cli_gateway, cli_outbox
from gateway.cli_support import embedded_redis_wanted, keyring_for, on_data
from simulators.toolkit import duration_type, progress

__all__ = ["main"]

DEMO_KEY_SUFFIX = "(hexbook up --demo)"
DEMO_SITES = "chi-000*"  # the demo provider-admin's sites


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
        help="provision a demo city (about 1,500 sites over Chicago, 15-minute slots kept "
        "28 days ahead) unless the data already holds one",
    )
    up.add_argument("--sites", type=int, default=1500, help="demo city size (default 1500)")
    cli_gateway.add_serving_arguments(up)
    up.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes sharing the port (default 1): this one and N-1 `hexbook "
        "gateway` processes, each started again if it dies",
    )
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
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="join this Ray cluster (host:port of its head) instead of starting a local Ray; "
        "its shards are then the cluster's, detached (default $RAY_ADDRESS)",
    )
    up.add_argument(
        "--shards",
        type=int,
        default=None,
        help="shard actors for a new deployment (default: one per core, less the one the "
        "gateway uses, at least 1); an existing deployment keeps its own",
    )
    up.add_argument(
        "--journal-redis",
        action="append",
        default=[],
        metavar="URL",
        help="one more Redis for shards to journal to (repeat for more): a new "
        "deployment's shards are spread over --redis-url and these in turn, so durability "
        "grows with the servers; an existing deployment keeps its map (docs/deployment.md)",
    )
    up.add_argument(
        "--fsync",
        choices=["always", "everysec"],
        default="always",
        help="embedded Redis AOF fsync: always (default, no acknowledged booking "
        "lost) or everysec (faster; may lose up to 1 s on a crash)",
    )

    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description=(
            "API keys for the gateway, stored hashed in Redis. Roles: booking-client "
            "(search, holds, bookings), provider-admin (the schedules of the providers "
            "it names), operator (everything, keys included). Works against the Redis of a "
            "running `hexbook up` in --data-dir, or --redis-url."
        ),
    )
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="data folder of the embedded redis-server (default ./data)",
    )
    where.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="use this Redis instead (default: $REDIS_URL)",
    )
    aud = sub.add_parser(
        "audit",
        parents=[where],
        help="check the journals: capacity, acknowledged bookings, expired holds, idempotency",
        description=(
            "Read every shard's snapshot and journal from Redis and check hexbook's "
            "invariants: no slot over capacity, every acknowledged booking present in the "
            "state its client last saw, no hold confirmed after it expired, no idempotency "
            "key used twice. Prints counts checked and violations found; exits 1 on any "
            "violation. Works on a running stack (its --data-dir) or a stopped one."
        ),
    )
    bak = sub.add_parser(
        "backup",
        parents=[where],
        help="write a consistent copy of a deployment's data to a file",
        description=(
            "Copy all of Redis's data (every shard's journal and snapshot, keys, rooms, "
            "the audit trail) as of one instant into FILE (an RDB file, mode 0600: it holds "
            "patient data), from a running stack (its --data-dir) or --redis-url, while it "
            "goes on serving. Restore it with `hexbook restore`."
        ),
    )
    bak.add_argument("file", type=Path, help="the backup file to write")
    res = sub.add_parser(
        "restore",
        help="bring a backup into an empty data folder, for `hexbook up` to start on",
        description=(
            "Load FILE (made by `hexbook backup`) into the empty --data-dir: its "
            "redis-server writes the append-only file `hexbook up --data-dir` starts on, "
            "with a password of its own. Then check it: `hexbook audit --data-dir`."
        ),
    )
    res.add_argument("file", type=Path, help="the backup file")
    res.add_argument("--data-dir", type=Path, required=True, help="an empty folder to restore into")
    res.add_argument(
        "--data-keys",
        type=Path,
        default=None,
        metavar="FILE",
        help="the data key file of the backed-up stack (its DATA/data.keys, kept apart from "
        "backups): checked to open the backup, and copied into the new folder",
    )
    trail = sub.add_parser(
        "audit-log",
        parents=[where],
        help="print the audit trail: who did which admin action, when, and the outcome",
        description=(
            "Read the audit trail (every operator and provider-admin action through the "
            "API, and every key this command line made or revoked): who (key id), what, "
            "to what, when (UTC), the status and the outcome. Oldest first. Read only: "
            "nothing changes an entry. docs/security.md lists what is recorded."
        ),
    )
    trail.add_argument("--csv", action="store_true", help="write CSV (for a spreadsheet)")
    trail.add_argument("--after", default="-", metavar="ID", help="only entries after this id")
    trail.add_argument("--limit", type=int, default=None, help="at most this many entries")
    aud.add_argument(
        "--acks",
        type=Path,
        nargs="*",
        default=[],
        metavar="FILE",
        help="JSON-lines files of bookings clients saw acknowledged (hexbook-load writes "
        "them); a folder means every *.jsonl in it",
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", parents=[where], help="make a key and print it (shown only this once)"
    )
    create.add_argument(
        "--role",
        required=True,
        choices=["booking-client", "provider-admin", "operator"],
        help="what the key may do",
    )
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--provider",
        action="append",
        default=[],
        metavar="ID",
        help="provider-admin: a provider id it may change, or a prefix ending in * "
        "(repeat for more)",
    )
    create.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s this key may make (default: the gateway's per-key limit)",
    )
    gateway_where = argparse.ArgumentParser(add_help=False)
    gateway_where.add_argument(
        "--url",
        default=os.environ.get("HEXBOOK_URL", "http://127.0.0.1:8000"),
        help="the gateway (default $HEXBOOK_URL or http://127.0.0.1:8000)",
    )
    gateway_where.add_argument(
        "--key", default=os.environ.get("HEXBOOK_KEY"), help="operator key ($HEXBOOK_KEY)"
    )
    imp = sub.add_parser(
        "import",
        parents=[gateway_where],
        help="import availability from another system (a SMART Scheduling Links feed)",
        description=(
            "Run a connector once through a running gateway (POST /v1/imports, operator "
            "key): fetch the source, create or update its providers and calendars, and "
            "print created, updated, unchanged, unplaced and conflicts. A re-import never "
            "drops a confirmed booking; a capacity lowered below one is a conflict. "
            "Sites without a position are placed at their US postal code, or listed as "
            "unplaced. Exits 1 when there were conflicts, unplaced sites or errors."
        ),
    )
    imp.add_argument(
        "connector",
        choices=["smart", "fhir", "csv"],
        help="smart: a $bulk-publish manifest (URL); fhir: a FHIR R4 Bundle of Location, "
        "Schedule and Slot (file or URL); csv: the sites CSV (file or URL; columns in "
        "docs/interop.md)",
    )
    imp.add_argument("source", help="URL, or for fhir and csv a local file")
    imp.add_argument("--state", action="append", default=[], help="only Slot files of this state")
    imp.add_argument("--force", action="store_true", help="fetch even if max-age has not run out")
    imp.add_argument(
        "--timezone",
        default="America/New_York",
        help="time zone for sites whose postal code gives none (default America/New_York)",
    )
    imp.add_argument(
        "--every",
        type=duration_type(1, 7 * 86400),
        default=None,
        metavar="DURATION",
        help="do not run once: make the gateway run it on a schedule, at once and then "
        "this often (e.g. 300, 90s, 15m, 1h; a URL source only). Prints the schedule id",
    )
    sched = sub.add_parser(
        "import-schedules",
        help="list or delete the imports a gateway runs on a schedule",
        description=(
            "Imports on a schedule (made with `hexbook import ... --every`): list them with "
            "their last run, or delete one. Talks to a running gateway with an operator key."
        ),
    )
    sched_actions = sched.add_subparsers(dest="action", required=True)
    sched_actions.add_parser(
        "list", parents=[gateway_where], help="every schedule: source, interval, last run"
    )
    sched_delete = sched_actions.add_parser(
        "delete", parents=[gateway_where], help="stop a schedule by its id"
    )
    sched_delete.add_argument("schedule_id", help="the id `list` shows")
    ring = sub.add_parser(
        "keyring",
        help="the data keys that seal patient data at rest: status, rotate, re-encrypt",
        description=(
            "Patient data (attestations, contact details) and the rest of every journal, "
            "snapshot and archived booking is sealed with AES-256-GCM before it reaches "
            "Redis; each value names the key that sealed it. Keys live in DATA/data.keys "
            "(embedded Redis) or HEXBOOK_DATA_KEYS / HEXBOOK_DATA_KEYS_FILE. "
            "docs/security.md says how to rotate."
        ),
    )
    ring_actions = ring.add_subparsers(dest="action", required=True)
    ring_actions.add_parser(
        "new", help="print a fresh key in the form of HEXBOOK_DATA_KEYS (for an external Redis)"
    )
    ring_actions.add_parser(
        "status", parents=[where], help="the keys, and how many stored values each one seals"
    )
    ring_actions.add_parser(
        "rotate",
        parents=[where],
        help="add a new key to the key file and seal new values with it (a running stack "
        "switches at once); older values stay readable",
    )
    ring_actions.add_parser(
        "reencrypt",
        parents=[where],
        help="seal every stored value with the current key (a running stack's shards write "
        "snapshots; archived bookings are rewritten); then older keys can be removed",
    )
    actions.add_parser("list", parents=[where], help="every key, without secrets")
    revoke = actions.add_parser("revoke", parents=[where], help="revoke a key by its id")
    revoke.add_argument("key_id", help="the 8-character id (hbk_<id>_...)")
    cli_outbox.add_parsers(sub, where)
    cli_gateway.add_parser(sub)
    return parser


def up(args: argparse.Namespace) -> int:
    import ray

    from actors.api import Hexbook
    from actors.embedded_redis import (
        EmbeddedRedis,
        RedisBinaryNotFound,
        RedisStartError,
        redacted,
    )
    from engine.errors import HexbookError
    from gateway.app import create_app
    from gateway.server import server, when_started
    from gateway.settings import Settings

    if (
        not 1 <= args.port <= 65535
        or args.sites < 1
        or (args.shards is not None and args.shards < 1)
        or not 1 <= args.gateways <= 64
    ):
        print(
            "hexbook: --port must be 1-65535, --sites and --shards at least 1, --gateways 1-64",
            file=sys.stderr,
        )
        return 2
    tls = cli_gateway.tls_of(args)
    if isinstance(tls, str):
        print(f"hexbook: {tls}", file=sys.stderr)
        return 2
    if (bad := _journal_servers_problem(args.journal_redis)) is not None:
        print(f"hexbook: {bad}", file=sys.stderr)
        return 2
    sock = cli_gateway.listen(args, args.gateways > 1)  # before anything: a taken port says so
    if isinstance(sock, int):
        return sock
    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)
        try:
            embedded = None
            url = args.redis_url or os.environ.get("REDIS_URL") or None
            if url is None and args.ray_address:
                # The shards of a cluster are detached and keep the URL they were made
                # with; an embedded Redis listens on this machine's loopback, on a new
                # port each start: they would lose it at the first restart.
                print(
                    "hexbook: --ray-address needs --redis-url: a Redis at a fixed address "
                    "that every node reaches (docs/deployment.md)",
                    file=sys.stderr,
                )
                return 2
            if url is None:
                embedded = stack.enter_context(EmbeddedRedis(args.data_dir, fsync=args.fsync))
                embedded.supervise()  # a redis-server that dies is started again
                url = embedded.url
            where = (
                redacted(args.redis_url)
                if args.redis_url
                else f"embedded redis-server in {args.data_dir.resolve()} (password-locked)"
            )
            print(f"hexbook: Redis: {where}")
        except (RedisBinaryNotFound, RedisStartError) as exc:
            print(f"hexbook: {exc}", file=sys.stderr)
            return 1
        try:
            ring = keyring_for(args, embedded=embedded is not None, create=True)
        except HexbookError as exc:
            print(f"hexbook: {exc}", file=sys.stderr)
            return 2
        print(f"hexbook: patient data sealed, data key {ring.current} ({_keys_where(ring)})")
        # On a Ray cluster the shards are the cluster's: detached, they outlive this
        # process (a front node lost, `up` restarted); a local Ray ends with `up`.
        # No --ray-address: a Ray of our own ("local"), never one found on this machine
        # (ray.init(None) joins a cluster that `ray start` left running, and with it
        # another deployment's shards of the same names).
        hb = Hexbook.connect(url, ray_address=args.ray_address or "local", shards=args.shards,
                             journals=args.journal_redis, keyring=ring,
                             detached=args.ray_address is not None)  # fmt: skip
        stack.callback(ray.shutdown)
        stack.callback(hb.close)
        if embedded is not None:  # `hexbook keyring` reaches the shards through it
            address = args.data_dir / RAY_ADDRESS_FILE
            address.write_text(ray.get_runtime_context().gcs_address + "\n")
            stack.callback(address.unlink, missing_ok=True)
        count = len(hb.directory.shards)
        servers = len(hb.stream_urls())
        print(f"hexbook: {count} shard{'' if count == 1 else 's'}"
              + (f", journaling to {servers} Redis servers" if servers > 1 else ""))  # fmt: skip
        if args.demo:
            _provision_demo(hb, args.sites)
        settings = Settings(
            redis_url=url,
            ray_address=args.ray_address,
            data_dir=args.data_dir,
            shards=args.shards,
            journal_redis_urls=args.journal_redis,
            access_log=args.access_log,
        )
        print(f"hexbook: notifications: {_channels(settings)}")
        srv = server(create_app(settings, hexbook=hb, redis_server=embedded), tls=tls)
        host = f"[{args.host}]" if ":" in args.host else args.host
        scheme = "https" if tls else "http"
        keys = _demo_keys(hb) if args.demo else None
        more = None
        if args.gateways > 1:
            more = _more_gateways(args, url, ray.get_runtime_context().gcs_address, ring)
            stack.callback(more.stop)

        def started() -> None:
            print(_banner(f"{scheme}://{host}:{args.port}", keys), flush=True)
            if more is not None:
                print(f"hexbook: starting {more.count} more gateway processes on port "
                      f"{args.port}", flush=True)  # fmt: skip
                more.start()

        when_started(srv, started)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C once shut down
            srv.run(sockets=[sock])
    print("hexbook: stopped cleanly")
    return 0


def _journal_servers_problem(urls: list[str]) -> str | None:
    """Why ``--journal-redis`` URLs cannot be used (not Redis URLs, not answering), or
    ``None``."""
    import redis

    from actors.embedded_redis import redacted

    for url in urls:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return f"--journal-redis {redacted(url)}: not a redis://, rediss:// or unix:// URL"
        try:
            redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5).ping()
        except (redis.RedisError, OSError, ValueError) as exc:
            return f"--journal-redis {redacted(url)} does not answer: {exc}"
    if len(set(urls)) != len(urls):
        return "--journal-redis names a server twice"
    return None


def _more_gateways(
    args: argparse.Namespace, url: str, ray_address: str, ring: Any
) -> cli_gateway.GatewayProcesses:
    """The N-1 `hexbook gateway` processes of ``up --gateways N``, on this one's port,
    Redis, Ray and data keys (the Redis URL and key file passed in the environment, not
    on a command line others can read)."""
    command = [sys.executable, "-m", "gateway.cli", "gateway", "--host", args.host,
               "--port", str(args.port), "--reuse-port", "--ray-address", ray_address]  # fmt: skip
    if args.tls_cert is not None:
        command += ["--tls-cert", str(args.tls_cert), "--tls-key", str(args.tls_key)]
    if args.access_log:
        command.append("--access-log")
    env = {**os.environ, "REDIS_URL": url}
    if ring.path is not None:
        env["HEXBOOK_DATA_KEYS_FILE"] = str(ring.path)
    return cli_gateway.GatewayProcesses(command, env, args.gateways - 1)


def _channels(settings: Any) -> str:
    """How this gateway delivers notifications (docs/notifications.md), in words."""
    from actors.embedded_redis import redacted

    ways = []
    if settings.smtp_url:
        ways.append(f"e-mail via {redacted(settings.smtp_url)}")
    if settings.webhook_url:
        ways.append(f"signed webhook to {settings.webhook_url}")
    if not ways:
        return "none sent (set HEXBOOK_SMTP_URL or HEXBOOK_WEBHOOK_URL; docs/notifications.md)"
    return " and ".join(ways) + ("" if settings.notify else " (by `hexbook deliver`)")


def _keys_where(ring: Any) -> str:
    if ring.path is not None:
        return f"keys in {ring.path}"
    return "keys from HEXBOOK_DATA_KEYS"


def _provision_demo(hb: Any, sites: int) -> None:
    from gateway.demo import demo_city

    existing = len(hb.directory.providers())
    if existing:
        print(f"hexbook: demo city already there ({existing} providers); its bookings are kept")
        return
    city = demo_city(sites)
    today = datetime.now(ZoneInfo("America/Chicago")).date()
    print(
        f"hexbook: provisioning {len(city)} demo sites, 28 days of 15-minute slots from "
        f"{today.isoformat()}, kept 28 days ahead as days pass"
    )
    with progress(len(city), "  provisioning") as done:
        hb.provision_many(city, today, 28, 15, progress=done, horizon_days=28)


def _banner(base: str, keys: dict[str, str] | None) -> str:
    """Where to look, once the gateway takes connections (URLs quoted for a shell)."""
    staff = "an operator key" if keys is None else "the operator key below"
    admin = (
        "a provider-admin key" if keys is None else f"the provider-admin key below ({DEMO_SITES})"
    )
    lines = [
        f"hexbook: serving {base}",
        "  pages:",
        f"    find and book:    {base}/",
        f"    launch dashboard: {base}/dashboard   (sign in with {staff})",
        f"    site admin:       {base}/admin   (sign in with {admin})",
        f"  API docs:  {base}/docs",
        f"  OpenAPI:   {base}/openapi.json",
        f"  metrics:   {base}/metrics",
        f"  SMART:     curl '{base}/smart/$bulk-publish'",
        f"  search:    curl '{base}/v1/search?lat=41.88&lng=-87.63&service=covid-vaccine'",
    ]
    if keys is not None:
        key = keys["booking-client"]
        lines += [
            "  keys (new for this run):",
            f"    operator:       {keys['operator']}",
            f"    provider-admin: {keys['provider-admin']}",
            f"    booking-client: {key}",
            f"  hold:      curl -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' -d "
            '\'{"provider_id": "chi-0000", "service": "covid-vaccine", '
            f'"start": "<a start from search>"}}\' {base}/v1/holds',
        ]
    lines += [
        "  more keys: hexbook keys create --role operator --name you",
        "  Ctrl-C stops hexbook; bookings stay in the data folder",
    ]
    return "\n".join(lines)


def _demo_keys(hb: Any) -> dict[str, str]:
    """Fresh keys for this demo run, one per role (the provider-admin's for the demo's
    first sites); earlier runs' demo keys are revoked."""
    from gateway.keys import ROLES, KeyStore

    store = KeyStore(hb.redis)
    for old in store.list():
        if old.active and old.name.endswith(DEMO_KEY_SUFFIX):
            store.revoke(old.key_id)
    return {
        role: store.create(
            role,
            f"demo {role} {DEMO_KEY_SUFFIX}",
            (DEMO_SITES,) if role == "provider-admin" else (),
        )[0]
        for role in ROLES
    }


def keys(args: argparse.Namespace) -> int:
    from gateway.audit_trail import append_sync
    from gateway.keys import KeyStore

    if args.action == "create" and args.role == "provider-admin" and not args.provider:
        print("hexbook: a provider-admin key needs the providers it may change (--provider)",
              file=sys.stderr)  # fmt: skip
        return 2

    def work(client: Any) -> int:
        store = KeyStore(client)
        if args.action == "create":
            key, record = store.create(args.role, args.name, tuple(args.provider), args.rate)
            append_sync(client, time.time(), _cli_who(), "cli", "key.create",
                        f"key_id={record.key_id}")  # fmt: skip
            print(f"{key}\n(key id {record.key_id}, role {record.role}; shown once: store it now)")
        elif args.action == "list":
            rows = store.list()
            print(f"{'id':8}  {'role':14}  {'state':7}  {'created (UTC)':19}  name")
            for k in rows:
                created = datetime.fromtimestamp(k.created_at, UTC)
                state = "active" if k.active else "revoked"
                scope = f" [{', '.join(k.providers)}]" if k.providers else ""
                print(
                    f"{k.key_id:8}  {k.role:14}  {state:7}  "
                    f"{created:%Y-%m-%d %H:%M:%S}  {k.name}{scope}"
                )
            if not rows:
                print("(no keys yet: hexbook keys create --role operator --name you)")
        else:
            record = store.revoke(args.key_id)
            append_sync(client, time.time(), _cli_who(), "cli", "key.revoke",
                        f"key_id={record.key_id}")  # fmt: skip
            print(f"revoked {record.key_id} ({record.role}, {record.name})")
        return 0

    return on_data(args, work)


def backup_(args: argparse.Namespace) -> int:
    from actors.backup import BackupError, backup
    from actors.embedded_redis import (
        NoHexbookData,
        RedisBinaryNotFound,
        RedisStartError,
        redis_endpoint,
    )

    if args.file.exists() and args.file.is_dir():
        print(f"hexbook: {args.file} is a folder; name the backup file", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        with (
            redis_endpoint(args.redis_url, args.data_dir, attach=True) as url,
            progress(100, "backup", sys.stderr.isatty()) as shown,
        ):
            size = backup(url, args.file, lambda done, total: shown(done * 100 // total))
            journals = _journal_servers_of(url)
    except NoHexbookData as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 2
    except (BackupError, RedisBinaryNotFound, RedisStartError, OSError) as exc:
        print(f"hexbook: backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backup: {args.file} ({size:,} bytes, {time.monotonic() - started:.1f} s)")
    if journals:
        print(
            f"hexbook: shards of this deployment journal to {len(journals)} more Redis "
            "server(s), not in this file; back each up too:\n"
            + "\n".join(f"  hexbook backup --redis-url {u} FILE" for u in journals),
            file=sys.stderr,
        )
    return 0


def _journal_servers_of(url: str) -> list[str]:
    """The other Redis servers (redacted URLs) the directory in ``url`` has shards
    journal to."""
    import redis

    from actors.directory import Directory
    from actors.embedded_redis import redacted

    return [redacted(u) for u in Directory(redis.Redis.from_url(url)).journal_urls()]


def restore_(args: argparse.Namespace) -> int:
    from actors.backup import BackupError, restore
    from actors.embedded_redis import RedisBinaryNotFound, RedisStartError
    from actors.sealed_data import CLEAR
    from actors.sealing import KEYS_FILE, Keyring, write_key_file
    from engine.errors import KeyringError

    if not args.file.is_file():
        print(f"hexbook: no such backup file: {args.file}", file=sys.stderr)
        return 2
    ring = None
    if args.data_keys is not None:
        try:
            ring = Keyring.from_file(args.data_keys)
        except (OSError, KeyringError) as exc:
            print(f"hexbook: --data-keys: {exc}", file=sys.stderr)
            return 2
    try:
        keys, sealed = restore(args.file, args.data_dir)
    except BackupError as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 2
    except (RedisBinaryNotFound, RedisStartError, OSError) as exc:
        print(f"hexbook: restore failed: {exc}", file=sys.stderr)
        return 1
    used = sorted(k for k in sealed if k != CLEAR)
    if used:
        print(f"sealed values: {', '.join(f'{sealed[k]:,} with data key {k}' for k in used)}")
    if ring is not None:
        if missing := [k for k in used if k not in ring.keys]:
            print(
                f"hexbook: {args.data_keys} lacks data key(s) {', '.join(missing)} that seal "
                "this backup: give the key file of the stack that made it",
                file=sys.stderr,
            )
            return 2
        write_key_file(args.data_dir / KEYS_FILE, ring)
        print(f"data keys copied to {args.data_dir / KEYS_FILE}")
    elif used and not os.environ.get("HEXBOOK_DATA_KEYS"):
        print(
            f"hexbook: WARNING: the backup is sealed with data key(s) {', '.join(used)}, and "
            f"no keys came with it: copy the stack's data.keys to {args.data_dir} (or "
            "set HEXBOOK_DATA_KEYS) before `hexbook up`, or give --data-keys",
            file=sys.stderr,
        )
    print(
        f"restored {keys:,} keys into {args.data_dir}; start it with "
        f"`hexbook up --data-dir {args.data_dir}`, check it with "
        f"`hexbook audit --data-dir {args.data_dir}`"
    )
    return 0


RAY_ADDRESS_FILE = "ray.address"


def _running_shards(args: argparse.Namespace, client: Any) -> dict[str, Any] | None:
    """Handles of the shards of the stack running on --data-dir (its Ray address is kept
    there by `hexbook up`), or ``None`` when none runs."""
    import ray

    from actors.api import NAMESPACE
    from actors.directory import Directory

    path = args.data_dir / RAY_ADDRESS_FILE
    address = os.environ.get("RAY_ADDRESS") or (path.read_text().strip() if path.exists() else "")
    if not address:
        return None
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    except (ConnectionError, RuntimeError):
        return None
    out = {}
    for name in Directory(client).shards:
        try:
            out[name] = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None  # not this stack's Ray any more
    return out


def keyring(args: argparse.Namespace) -> int:
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        # A local Ray started by `hexbook up` asks for its token (Ray's default for a new
        # local cluster); a driver given its address sends it only when told to, and
        # Ray reads this when it is imported.
        os.environ["RAY_AUTH_MODE"] = "token"
    from collections import Counter

    import ray

    from actors.directory import servers_of
    from actors.sealed_data import CLEAR, census, reseal_archive
    from actors.sealing import Keyring, write_key_file
    from gateway.audit_trail import append_sync

    if args.action == "new":
        print(f"HEXBOOK_DATA_KEYS={Keyring.generate().as_env()}")
        return 0

    def counted(servers: list[Any]) -> Counter[str]:
        return sum((census(c) for c in servers), Counter())

    def work(client: Any) -> int:
        ring = keyring_for(args, embedded=embedded_redis_wanted(args))
        servers = servers_of(client)  # and the Redis servers shards journal to
        if args.action == "status":
            counts = counted(servers)
            print(f"{'key id':10}  {'values':>10}")
            for kid in [*ring.keys, *(k for k in counts if k not in ring.keys)]:
                mark = (
                    "  (current: seals new values)"
                    if kid == ring.current
                    else "  (not in this keyring: unreadable here)"
                    if kid not in ring.keys and kid != CLEAR
                    else ""
                )
                print(f"{kid:10}  {counts.get(kid, 0):>10,}{mark}")
            return 0
        shards = _running_shards(args, client)
        if args.action == "rotate":
            if ring.path is None:
                print(
                    "hexbook: the keys come from HEXBOOK_DATA_KEYS: add one there "
                    "(`hexbook keyring new` prints one; put it last) and restart",
                    file=sys.stderr,
                )
                return 2
            new = ring.rotated()
            write_key_file(ring.path, new)
            append_sync(client, time.time(), _cli_who(), "cli", "keyring.rotate",
                        f"key_id={new.current}")  # fmt: skip
            print(f"new data key {new.current} in {ring.path} (older keys kept)")
            if shards:
                ray.get([h.use_keyring.remote(new) for h in shards.values()])
                print(f"{len(shards)} running shard(s) seal with {new.current} now")
            else:
                print("no running stack: its shards seal with it from their next start")
            return 0
        if not shards:
            print(
                f"hexbook: no running stack on {args.data_dir}: start `hexbook up` "
                "first (its shards write their state anew)",
                file=sys.stderr,
            )
            return 2
        ray.get([h.use_keyring.remote(ring) for h in shards.values()])
        ray.get([h.reseal.remote() for h in shards.values()])
        rewritten = sum(reseal_archive(c, ring) for c in servers)
        append_sync(client, time.time(), _cli_who(), "cli", "keyring.reencrypt",
                    f"key_id={ring.current}")  # fmt: skip
        counts = counted(servers)
        print(
            f"re-encrypted with {ring.current}: {len(shards)} shard snapshot(s), "
            f"{rewritten:,} archived booking(s); values by key: "
            + ", ".join(f"{k} {n:,}" for k, n in sorted(counts.items()))
        )
        return 0

    return on_data(args, work)


def _cli_who() -> str:
    """Who ran a command: ``cli:<login>@<host>`` (no key is involved)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def audit_log(args: argparse.Namespace) -> int:
    import redis

    from actors.embedded_redis import (
        NoHexbookData,
        RedisBinaryNotFound,
        RedisStartError,
        redis_endpoint,
    )
    from gateway.audit_trail import entries_csv, read_sync

    if args.limit is not None and args.limit < 1:
        print("hexbook: --limit must be at least 1", file=sys.stderr)
        return 2
    if args.after != "-" and not re.fullmatch(r"\d{1,20}-\d{1,20}", args.after):
        print(
            f"hexbook: --after {args.after!r}: an entry id such as 1764600000000-0", file=sys.stderr
        )
        return 2
    try:
        with redis_endpoint(args.redis_url, args.data_dir, attach=True) as url:
            client = redis.Redis.from_url(url)
            try:
                entries = read_sync(client, args.after, args.limit)
            finally:
                client.close()
    except NoHexbookData as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 2
    except (RedisBinaryNotFound, RedisStartError, redis.RedisError) as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        sys.stdout.write(entries_csv(entries))
        return 0
    print(f"{'id':17}  {'at (UTC)':23}  {'who':24}  {'action':18}  {'outcome':13}  target")
    for e in entries:
        print(f"{e.id:17}  {e.at[:23]:23}  {e.who[:24]:24}  {e.action:18}  "
              f"{e.outcome + ' ' + str(e.status or ''):13}  {e.target}")  # fmt: skip
    if not entries:
        print("(no entries)")
    return 0


def audit(args: argparse.Namespace) -> int:
    from actors.audit import audit as run_audit
    from actors.audit import read_acks

    files: list[Path] = []
    for path in args.acks:
        if path.is_dir():
            files += sorted(path.glob("*.jsonl"))
        elif path.is_file():
            files.append(path)
        else:
            print(f"hexbook: no such file or folder: {path}", file=sys.stderr)
            return 2

    def work(client: Any) -> int:
        ring = keyring_for(args, embedded=embedded_redis_wanted(args))
        report = run_audit(client, read_acks(files), ring)
        print(report.summary())
        return 0 if report.ok else 1

    return on_data(args, work)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        from gateway.observe import configure_logging

        configure_logging("INFO")
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return up(args)
    if args.command == "gateway":
        from gateway.observe import configure_logging

        configure_logging("INFO")
        return cli_gateway.gateway(args)
    if args.command == "keys":
        return keys(args)
    if args.command == "audit":
        return audit(args)
    if args.command == "keyring":
        return keyring(args)
    if args.command == "audit-log":
        return audit_log(args)
    if args.command == "backup":
        return backup_(args)
    if args.command == "restore":
        return restore_(args)
    if args.command == "import":
        return import_(args)
    if args.command == "import-schedules":
        return import_schedules(args)
    if args.command == "deliver":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return cli_outbox.deliver(args)
    if args.command == "outbox":
        return cli_outbox.outbox(args)
    return 2


def import_(args: argparse.Namespace) -> int:
    if not args.key:
        print("hexbook: an operator key is needed: --key or $HEXBOOK_KEY", file=sys.stderr)
        return 2
    body: dict[str, Any] = {
        "connector": args.connector,
        "states": args.state,
        "force": args.force,
        "timezone": args.timezone,
    }
    if args.connector != "smart" and not args.source.startswith(("http://", "https://")):
        try:
            body["content"] = Path(args.source).read_text()
        except OSError as exc:
            print(f"hexbook: cannot read {args.source}: {exc.strerror}", file=sys.stderr)
            return 2
        body["source"] = Path(args.source).name
    else:
        body["url"] = args.source
    if args.every is not None:
        if "url" not in body:
            print("hexbook: --every needs a URL source (a file is read once)", file=sys.stderr)
            return 2
        schedule = {k: body[k] for k in ("connector", "url", "states", "timezone")}
        r = _gateway(
            args,
            "POST",
            "/v1/imports/schedules",
            json={**schedule, "every_seconds": int(args.every)},
        )
        if r is None or r.status_code != 201:
            return _refused(r, "schedule")
        sid = r.json()["schedule_id"]
        print(f"schedule {sid}: {args.connector} {args.source} every {int(args.every)} s")
        return 0
    r = _gateway(args, "POST", "/v1/imports", json=body)
    if r is None or r.status_code != 200:
        return _refused(r, "import")
    d = r.json()
    if not d["fetched"]:
        print(f"nothing imported: {d['note']}")
        return 0
    print(
        f"created {d['created']}, updated {d['updated']}, unchanged {d['unchanged']}, "
        f"unplaced {len(d['unplaced'])}, conflicts {len(d['conflicts'])}, "
        f"errors {len(d['errors'])}"
    )
    for what in ("unplaced", "conflicts", "errors"):
        for line in d[what]:
            print(f"  {what}: {line}")
    return 1 if d["unplaced"] or d["conflicts"] or d["errors"] else 0


def _gateway(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    """One call to the gateway with the operator key; ``None`` (and a message) if it
    cannot be reached."""
    import httpx

    try:
        return httpx.request(
            method,
            f"{args.url.rstrip('/')}{path}",
            headers={"Authorization": f"Bearer {args.key}"},
            timeout=600,
            **kw,
        )
    except httpx.HTTPError as exc:
        print(f"hexbook: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
        return None


def _refused(r: Any, what: str) -> int:
    if r is None:
        return 1
    print(f"hexbook: {what} refused: {r.status_code} {r.text[:500]}", file=sys.stderr)
    return 2 if 400 <= r.status_code < 500 else 1


def import_schedules(args: argparse.Namespace) -> int:
    if not args.key:
        print("hexbook: an operator key is needed: --key or $HEXBOOK_KEY", file=sys.stderr)
        return 2
    if args.action == "delete":
        r = _gateway(args, "DELETE", f"/v1/imports/schedules/{args.schedule_id}")
        if r is None or r.status_code != 204:
            return _refused(r, "delete")
        print(f"deleted schedule {args.schedule_id}")
        return 0
    r = _gateway(args, "GET", "/v1/imports/schedules")
    if r is None or r.status_code != 200:
        return _refused(r, "list")
    now = time.time()
    print(
        f"{'id':<13} {'every':>7} {'runs':>5} {'failed':>6} {'last run':>9}  source / last result"
    )
    for s in r.json():
        last = f"{now - s['last_run_at']:.0f}s ago" if s["last_run_at"] else "never"
        if s["last_error"]:
            outcome = f"error: {s['last_error'][:80]}"
        elif s["last_result"] is None:
            outcome = "not run yet"
        elif not s["last_result"]["fetched"]:
            outcome = s["last_result"]["note"][:80]
        else:
            d = s["last_result"]
            outcome = (
                f"created {d['created']}, updated {d['updated']}, unchanged "
                f"{d['unchanged']}, conflicts {len(d['conflicts'])}, errors {len(d['errors'])}"
            )
        print(
            f"{s['schedule_id']:<13} {s['every_seconds']:>6}s {s['runs']:>5} "
            f"{s['failures']:>6} {last:>9}  {s['connector']} {s['url']}\n{'':>45}{outcome}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
