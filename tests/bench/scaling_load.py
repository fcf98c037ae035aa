"""hexbook with more gateway processes and more shards, on this machine, in one run.

The peers part's city (1,500 sites x 14 days x 36 slots of capacity 4) and its wrk
script (hold, then book), uniform bodies (each place taken once), 32 and 256
connections. Two data folders, one of 1 shard and one of 2, each put through the API
once; each round starts ``hexbook up --gateways G`` on each folder in turn (G = 1, 2),
so every figure of a round comes from the same machine minutes apart. Then the same
flow through a local 3-node Ray cluster (``ray.cluster_utils.Cluster``: a head with no
CPU for shards, two worker nodes of one CPU), ``hexbook up --ray-address`` on a third
folder of 2 shards, with 1 and 2 gateways; and 2 shards on one node journaling to two
Redis servers (``--journal-redis``, ADR 0025). Prints bookings/min (from 201 answers),
p99, and the ratios 2 gateways / 1, 2 shards / 1, 3-node cluster / one node, 2 Redis / 1.
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.bench.peers_load import (
    SECONDS,
    SITES,
    TZ,
    _provision,
    _unlimited_key,
    _wait_gateways,
    bodies,
)

__all__ = ["part_scaling"]

CONFIGS = [(g, s) for s in (1, 2) for g in (1, 2)]  # (gateways, shards)
CLUSTER = [(1, 2), (2, 2)]  # through the 3-node cluster
JOURNALS = [(1, 2), (2, 2)]  # on one node, shard-1 journaling to a second Redis
ONE, THREE, SPLIT = "1 node", "3 nodes", "1 node, 2 Redis"
CONNECTIONS = (32, 256)


def part_scaling(rounds: int, seconds: float = SECONDS) -> dict[str, float]:
    from simulators.toolkit import start_stack
    from tests.bench.gateway_load import script_flow, wrk

    if shutil.which("wrk") is None:
        print("== scaling: skipped, wrk is not installed (Debian: apt-get install wrk)")
        return {}
    first = datetime.now(TZ).date() + timedelta(days=1)
    print(f"== scaling: hexbook up --gateways 1/2 on 1 and 2 shards, {SITES} sites, hold "
          f"then book, uniform, {rounds} rounds")  # fmt: skip
    per_run = int(seconds * 6_000)
    runs = rounds * (len(CONFIGS) + len(CLUSTER) + len(JOURNALS)) * (len(CONNECTIONS) + 1)
    pool = bodies(first, per_run * runs, False, random.Random(19))
    chunks = iter([pool[i * per_run : (i + 1) * per_run] for i in range(runs)])
    results: dict[tuple[str, int, int, int], list[dict[str, Any]]] = {}
    import redis

    from actors.embedded_redis import EmbeddedRedis
    from actors.sealing import Keyring
    from gateway.keys import KeyStore
    from tests.raycluster import three_nodes

    with (
        three_nodes() as cluster,
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp) / "cluster-redis") as redis_server,
        EmbeddedRedis(Path(tmp) / "journal-redis") as journal_server,
    ):
        # On the cluster, as a deployment runs there: its own Redis, at one address for
        # every start (the shards are the cluster's, detached, and keep their Redis).
        on_cluster = ["--ray-address", cluster.address]
        env = {"REDIS_URL": redis_server.url, "HEXBOOK_DATA_KEYS": Keyring.generate().as_env()}
        envs = {"shards-1": {}, "shards-2": {}, "cluster": env, "journals-2": {}}
        split = ["--shards", "2", "--journal-redis", journal_server.url]
        store = KeyStore(redis.Redis.from_url(redis_server.url))
        keys: dict[str, str] = {}
        for name, extra in (("shards-1", ["--shards", "1"]), ("shards-2", ["--shards", "2"]),
                            ("cluster", ["--shards", "2", *on_cluster]),
                            ("journals-2", split)):  # fmt: skip
            with start_stack(Path(tmp) / name, args=extra, env=envs[name]) as stack:
                if name == "cluster":
                    keys[name] = store.create("booking-client", "bench", (), 10_000_000)[0]
                    operator = store.create("operator", "bench", (), 10_000_000)[0]
                else:
                    keys[name] = _unlimited_key(stack.data_dir, "booking-client")
                    operator = _unlimited_key(stack.data_dir, "operator")
                _provision(stack.url, operator, first)
        runs_of = [
            *((ONE, g, s, f"shards-{s}", []) for g, s in CONFIGS),
            *((THREE, g, s, "cluster", on_cluster) for g, s in CLUSTER),
            *((SPLIT, g, s, "journals-2", split[2:]) for g, s in JOURNALS),
        ]
        for _ in range(rounds):
            for where, gateways, shards, name, extra in runs_of:
                args = ["--gateways", str(gateways), *extra]
                with start_stack(Path(tmp) / name, args=args, env=envs[name]) as stack:
                    _wait_gateways(stack.log, gateways - 1)
                    wrk(stack.url, script_flow(keys[name], next(chunks)), 32, 2)  # warm up
                    for c in CONNECTIONS:
                        r = wrk(stack.url, script_flow(keys[name], next(chunks)), c, seconds)
                        results.setdefault((where, gateways, shards, c), []).append(r)
    return _report(results)


def _report(results: dict[tuple[str, int, int, int], list[dict[str, Any]]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    print(f"{'ray':>15} {'gateways':>8} {'shards':>6} {'conn':>4} {'bookings/min median':>20} "
          f"{'best':>10} {'p99 ms':>7}  answers")  # fmt: skip
    order = sorted(results.items(), key=lambda kv: (kv[0][3], kv[0][0], kv[0][2], kv[0][1]))
    for (where, g, s, c), rs in order:
        per_min = [r["counts"].get("booking:201", 0) / r["seconds"] * 60 for r in rs]
        statuses: dict[str, int] = {}
        for r in rs:
            for k, v in r["counts"].items():
                if not k.endswith(":201"):
                    statuses[k] = statuses.get(k, 0) + v
        p99 = statistics.median(r["p99_ms"] for r in rs)
        print(f"{where:>15} {g:>8} {s:>6} {c:>4} {statistics.median(per_min):>20,.0f} "
              f"{max(per_min):>10,.0f} {p99:>7.1f}  {statuses or 'all 201'}")  # fmt: skip
        tag = {ONE: "", THREE: "cluster_", SPLIT: "journals2_"}[where]
        figures[f"scaling_{tag}{g}gw_{s}sh_{c}_bookings_per_min"] = statistics.median(per_min)
        figures[f"scaling_{tag}{g}gw_{s}sh_{c}_p99_ms"] = p99
    print("scaling ratios (medians):")
    for c in CONNECTIONS:
        for s in (1, 2):
            one = figures.get(f"scaling_1gw_{s}sh_{c}_bookings_per_min")
            two = figures.get(f"scaling_2gw_{s}sh_{c}_bookings_per_min")
            if one and two:
                print(f"  {c:>3} conn., {s} shard(s): 2 gateways / 1 = {two / one:.2f}x")
                figures[f"scaling_gateways_{s}sh_{c}"] = two / one
        for g in (1, 2):
            one = figures.get(f"scaling_{g}gw_1sh_{c}_bookings_per_min")
            two = figures.get(f"scaling_{g}gw_2sh_{c}_bookings_per_min")
            if one and two:
                print(f"  {c:>3} conn., {g} gateway(s): 2 shards / 1 = {two / one:.2f}x")
                figures[f"scaling_shards_{g}gw_{c}"] = two / one
        for tag, pairs, what in (("cluster", CLUSTER, "3-node cluster / one node"),
                                 ("journals", JOURNALS, "2 Redis servers / 1")):  # fmt: skip
            prefix = "cluster" if tag == "cluster" else "journals2"
            for g, s in pairs:
                one = figures.get(f"scaling_{g}gw_{s}sh_{c}_bookings_per_min")
                other = figures.get(f"scaling_{prefix}_{g}gw_{s}sh_{c}_bookings_per_min")
                if one and other:
                    print(f"  {c:>3} conn., {g} gateway(s), {s} shards: {what} "
                          f"= {other / one:.2f}x")  # fmt: skip
                    figures[f"scaling_{tag}_{g}gw_{c}"] = other / one
    return figures
