"""``hexbook gateway``: one more gateway process for a running deployment, and the
extra gateway processes that ``hexbook up --gateways N`` starts beside its own.

A gateway keeps nothing another gateway needs: its search index follows the
availability stream; API keys, rate limits, waiting rooms, idempotency keys, series and
the outbox are in Redis; the shards are Ray actors found by name. So a gateway joins
with the deployment's Redis and Ray addresses (and its data keys) and serves at once.
On one machine gateways share one port (SO_REUSEPORT: the kernel spreads connections
over them); on other machines each serves its own, behind a load balancer.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "GatewayProcesses",
    "add_parser",
    "add_serving_arguments",
    "gateway",
    "listen",
    "tls_of",
]

log = logging.getLogger("hexbook.gateways")


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --tls-cert, --tls-key, --access-log: how a gateway serves."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=os.environ.get("HEXBOOK_TLS_CERT") or None,
        help="serve HTTPS with this certificate chain (PEM; default $HEXBOOK_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=os.environ.get("HEXBOOK_TLS_KEY") or None,
        help="the certificate's private key (PEM; default $HEXBOOK_TLS_KEY)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request as a JSON line on stderr"
    )


def add_parser(sub: Any) -> None:
    """The ``gateway`` command's parser, under ``sub``."""
    gw = sub.add_parser(
        "gateway",
        help="serve one more gateway of a running deployment (another machine, or more "
        "processes on this one)",
        description=(
            "Join a running hexbook deployment as one more gateway: the shards stay where "
            "they are (Ray), the state gateways share is in Redis (keys, rate limits, "
            "waiting rooms, idempotency), the search index is built from the availability "
            "stream. Needs the deployment's Redis, its Ray address and its data keys "
            "(HEXBOOK_DATA_KEYS or HEXBOOK_DATA_KEYS_FILE, the same on every process). "
            "Ctrl-C stops this gateway only."
        ),
    )
    gw.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="the deployment's Redis (default $REDIS_URL)",
    )
    gw.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="the deployment's Ray cluster, host:port of its head (default $RAY_ADDRESS; "
        "`hexbook up` writes its own in <data-dir>/ray.address)",
    )
    add_serving_arguments(gw)
    gw.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with the other gateways of this machine (SO_REUSEPORT)",
    )


def tls_of(args: argparse.Namespace) -> tuple[Path, Path] | str | None:
    """The (certificate, key) to serve HTTPS with, None for plain HTTP, or why not."""
    from gateway.server import check_tls, loopback

    if (args.tls_cert is None) != (args.tls_key is None):
        return "HTTPS needs both --tls-cert and --tls-key"
    if args.tls_cert is not None:
        why = check_tls(args.tls_cert, args.tls_key)
        return why if why is not None else (args.tls_cert, args.tls_key)
    if not loopback(args.host):
        print(
            f"hexbook: WARNING: serving plain HTTP on {args.host}, reachable from other "
            "machines: API keys, booking tokens and patient references cross the network "
            "in clear. Give --tls-cert and --tls-key, or serve behind a TLS proxy.",
            file=sys.stderr,
        )
    return None


def listen(args: argparse.Namespace, reuse_port: bool) -> socket.socket | int:
    """The socket of --host and --port, or the exit status after saying why not."""
    from gateway.server import PortInUse, bind

    try:
        return bind(args.host, args.port, reuse_port=reuse_port)
    except OSError as exc:
        print(f"hexbook: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2 if isinstance(exc, PortInUse) else 1


def gateway(args: argparse.Namespace) -> int:
    """``hexbook gateway``: serve until stopped; 2 for a bad command line or deployment."""
    import redis
    from redis.exceptions import RedisError

    from actors.api import Hexbook
    from actors.directory import Directory
    from actors.embedded_redis import redacted
    from engine.errors import HexbookError
    from gateway.app import create_app
    from gateway.server import server, when_started
    from gateway.settings import Settings, data_keyring

    if not args.redis_url or not args.ray_address:
        print(
            "hexbook: a gateway joins a running deployment: give its --redis-url and "
            "--ray-address (or REDIS_URL and RAY_ADDRESS); `hexbook up` starts one",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.port <= 65535:
        print("hexbook: --port must be 1-65535", file=sys.stderr)
        return 2
    tls = tls_of(args)
    if isinstance(tls, str):
        print(f"hexbook: {tls}", file=sys.stderr)
        return 2
    where = redacted(args.redis_url)
    client = redis.Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        shards = Directory(client).shards
    except RedisError as exc:
        print(f"hexbook: cannot reach the deployment's Redis {where}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not shards:
        print(
            f"hexbook: no hexbook deployment in {where} (no shards in its directory); "
            "start one with `hexbook up`",
            file=sys.stderr,
        )
        return 2
    settings = Settings(redis_url=args.redis_url, ray_address=args.ray_address,
                        access_log=args.access_log)  # fmt: skip
    try:
        ring = data_keyring(settings, embedded=False)
    except HexbookError as exc:
        print(f"hexbook: {exc}", file=sys.stderr)
        return 2
    sock = listen(args, args.reuse_port)
    if isinstance(sock, int):
        return sock
    import ray

    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)
        try:
            # A shard this gateway has to create (one whose actor was lost for good) is
            # the cluster's, not this process's: detached.
            hb = Hexbook.connect(
                args.redis_url, ray_address=args.ray_address, keyring=ring, detached=True
            )
        except ConnectionError as exc:
            print(f"hexbook: cannot join Ray at {args.ray_address}: {exc}", file=sys.stderr)
            return 1
        stack.callback(ray.shutdown)
        stack.callback(hb.close)
        srv = server(create_app(settings, hexbook=hb), tls=tls)
        host = f"[{args.host}]" if ":" in args.host else args.host
        base = f"{'https' if tls else 'http'}://{host}:{args.port}"
        count = len(shards)
        said = f"hexbook: gateway (pid {os.getpid()}) serving {base}, {count} shard(s), {where}"
        when_started(srv, lambda: print(said, flush=True))
        with contextlib.suppress(KeyboardInterrupt):
            srv.run(sockets=[sock])
    print(f"hexbook: gateway (pid {os.getpid()}) stopped cleanly")
    return 0


class GatewayProcesses:
    """The extra gateway processes of ``hexbook up --gateways N``: ``hexbook gateway``
    on the same port, each started again if it dies, stopped with ``up``."""

    def __init__(self, command: list[str], env: dict[str, str], count: int) -> None:
        self.command = command
        self.env = env
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="hexbook-gateways", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.count)]
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, process in enumerate(self.processes):
                code = process.poll()
                if code is not None and not self._stopping.is_set():
                    print(
                        f"hexbook: gateway process {process.pid} exited ({code}); starting "
                        "it again",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.processes[i] = self._spawn()
                    self.restarts += 1

    def stop(self, seconds: float = 30.0) -> None:
        """Stop every process (SIGTERM: each finishes its requests), then wait."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
