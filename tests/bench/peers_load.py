"""hexbook against what users would build instead, in one run, one method.

The city: 1,500 sites x 14 days x 36 slots (08:00-17:00, 15 minutes) of capacity 4.
Each system gets the same wrk script (hold, then book with the hold's id) and the same
bodies: uniform over every slot, or launch-skewed (80% of holds to 5% of the sites, on
day one; each round and concurrency a launch of its own: hot sites nobody has booked,
the same for every system). Rounds alternate the systems, each round's rotation one
system later than the last; bookings/s are counted from 201 answers. A uniform run goes
as fast as it can for ``HEXBOOK_BENCH_SECONDS``; a launch is a crowd (as many holds)
served to the end, and its bookings/min are its bookings over the time it took: in a
run of fixed length a faster system empties the hot sites sooner and spends the rest
of it on 409s, so its figure fell toward the launch's size whatever its speed.

- ``redis``: tests/bench/peers.py's Lua peer, uvicorn ``--workers N``, a redis-server of
  its own with ``appendfsync always``;
- ``postgres``: the asyncpg peer, ``--workers N``, PostgreSQL (Debian's) with
  synchronous commits; skipped, saying why, when PostgreSQL is not installed;
- ``hexbook``: ``hexbook up`` in a process of its own (its Ray, its redis-server with
  ``appendfsync always``, the default shard count: 1 on 2 cores), the city put through
  ``PUT /v1/providers``; ``hexbook-2gw``: the same with ``--gateways 2``.

The targets' ratios are the issue's columns: at 32 connections one worker each (one
gateway against the stronger 1-worker peer), at 256 the peers at their best worker
count against hexbook's better gateway count; every side's best against every other's
is printed beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["part_peers"]

ROOT = Path(__file__).resolve().parents[2]
SITES, DAYS, SLOTS, CAPACITY = 1500, 14, 36, 4
TZ = ZoneInfo("America/Chicago")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SECONDS = float(os.environ.get("HEXBOOK_BENCH_SECONDS", "6"))  # each uniform wrk run
LAUNCH_BOUND = 90  # seconds a skewed launch may take at most


def _wait_gateways(log: Path, more: int, seconds: float = 120) -> None:
    """Until ``more`` extra gateway processes say they serve (their lines in the log)."""
    deadline = time.monotonic() + seconds
    while log.read_text().count(") serving http") < more:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the extra gateways did not start; see {log}")
        time.sleep(0.2)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def city(first: date) -> list[tuple[str, int, int]]:
    """Every slot: (provider_id, start, capacity)."""
    out = []
    for i in range(SITES):
        for d in range(DAYS):
            day = first + timedelta(days=d)
            t0 = datetime(day.year, day.month, day.day, 8, 0, tzinfo=TZ)
            out += [
                (f"site-{i:04d}", int((t0 + timedelta(minutes=15 * k)).timestamp()), CAPACITY)
                for k in range(SLOTS)
            ]
    return out


def bodies(
    first: date, n: int, skewed: bool, rng: random.Random, hot: list[str] | None = None
) -> list[str]:
    """``n`` hold bodies: uniform, each place at most once (no 409 from a full slot), or
    launch-skewed, 80% to ``hot`` (5% of the sites, drawn when not given) on the first
    day (those run out: 409s)."""
    hot = hot or [f"site-{i:04d}" for i in rng.sample(range(SITES), SITES // 20)]
    seen: set[tuple[str, int]] = set()
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        if skewed and rng.random() < 0.8:
            pid, d = rng.choice(hot), 0
        else:
            pid, d = f"site-{rng.randrange(SITES):04d}", rng.randrange(DAYS)
        day = first + timedelta(days=d)
        start = datetime(day.year, day.month, day.day, 8, 0, tzinfo=TZ)
        start += timedelta(minutes=15 * rng.randrange(SLOTS))
        k = (pid, int(start.timestamp()))
        body = {"provider_id": pid, "service": "covid-vaccine", "start": start.isoformat()}
        text = json.dumps(body, separators=(",", ":"))
        if skewed:  # a launch: the hot places run out, and the rest are 409s
            out.append(text)
            continue
        if k in seen:
            continue
        seen.add(k)
        out += [text] * CAPACITY
    rng.shuffle(out)
    return out[:n]


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    """A PostgreSQL of its own (synchronous commits), as the ``postgres`` user; its DSN,
    or ``None`` (saying why) when Debian's PostgreSQL is not installed."""
    if not (PG_BIN / "initdb").exists():
        print("   postgres: skipped, PostgreSQL is not installed (apt-get install postgresql)")
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="hexbook-pg-"))
    shutil.chown(folder, "postgres")
    port = _port()
    run = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run, str(PG_BIN / "initdb"), "-D", str(folder / "db"), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
    opts = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            "-c shared_buffers=512MB -c synchronous_commit=on -c fsync=on")  # fmt: skip
    ctl = [*run, str(PG_BIN / "pg_ctl"), "-D", str(folder / "db")]
    subprocess.run([*ctl, "-o", opts, "-w", "-l", str(folder / "log"), "start"], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def peer(app: str, env: dict[str, str], workers: int) -> Iterator[str]:
    """``uvicorn --factory tests.bench.peers:<app> --workers N``; its URL once it answers."""
    import httpx

    from tests.polling import until

    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", f"tests.bench.peers:{app}",
         "--port", str(port), "--workers", str(workers), "--loop", "uvloop",
         "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:  # a 404 for a hold nobody made: the app is up
            if proc.poll() is not None:
                raise RuntimeError(f"the {app} peer exited ({proc.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                body = {"hold_id": "0" * 32, "patient": {"reference": "x"}}
                return httpx.post(f"{url}/v1/bookings", json=body).status_code == 404
            return False

        until(answers, 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _unlimited_key(data_dir: Path, role: str) -> str:
    """A key of ``role`` that no rate limit slows (the load is the point)."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "create", "--role", role, "--name",
         "bench", "--rate", "10000000", "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return done.stdout.split()[0]


def _provision(url: str, operator: str, first: date) -> None:
    """The city's sites through ``PUT /v1/providers`` (8 at a time), 14 days each."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    week = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    window = [{"opens": "08:00", "closes": "17:00", "capacity": CAPACITY}]
    headers = {"Authorization": f"Bearer {operator}"}

    def put(i: int) -> None:
        body = {
            "name": f"Site {i}", "lat": 41.7 + (i % 50) * 0.006,
            "lng": -87.8 + (i // 50) * 0.008, "timezone": "America/Chicago",
            "services": ["covid-vaccine"], "schedule": {"days": dict.fromkeys(week, window)},
            "first_day": first.isoformat(), "days": DAYS, "horizon_days": 0,
        }  # fmt: skip
        r = httpx.put(f"{url}/v1/providers/site-{i:04d}", json=body, headers=headers, timeout=60)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"site-{i:04d}: {r.status_code} {r.text[:200]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(SITES)))
    print(f"hexbook: {SITES} sites put through the API in {time.perf_counter() - t0:.0f} s")


def part_peers(rounds: int, seconds: float = SECONDS) -> dict[str, float]:
    from actors.embedded_redis import EmbeddedRedis
    from simulators.toolkit import start_stack
    from tests.bench.gateway_load import script_flow, wrk
    from tests.bench.peers import seed_pg, seed_redis

    if shutil.which("wrk") is None:
        print("== peers: skipped, wrk is not installed (Debian: apt-get install wrk)")
        return {}
    first = datetime.now(TZ).date() + timedelta(days=1)
    slots = city(first)
    print(f"== peers: {SITES} sites x {DAYS} days x {SLOTS} slots of capacity {CAPACITY} "
          f"({len(slots):,} slots), hold then book, {rounds} alternating rounds")  # fmt: skip
    rng = random.Random(20)
    per_run = int(seconds * 6_000)
    results: Results = {}
    plan = [(shape, c) for shape in ("uniform", "skewed") for c in (32, 256)]
    with contextlib.ExitStack() as stack:
        systems: dict[str, str] = {}
        data = stack.enter_context(tempfile.TemporaryDirectory())
        r_server = stack.enter_context(EmbeddedRedis(Path(data) / "peer-redis"))
        seed_redis(r_server.url, slots)
        for workers, label in ((1, "redis-1w"), (2, "redis-2w")):
            systems[label] = stack.enter_context(
                peer("redis_app", {"HEXBOOK_PEER_REDIS_URL": r_server.url}, workers)
            )
        dsn = stack.enter_context(postgres())
        if dsn is not None:
            asyncio.run(seed_pg(dsn, slots))
            for workers, label in ((1, "postgres-1w"), (2, "postgres-2w")):
                systems[label] = stack.enter_context(
                    peer("pg_app", {"HEXBOOK_PEER_PG_DSN": dsn}, workers)
                )
        # hexbook as `hexbook up` serves it (its own Ray, redis-server and process; the
        # default shards: 1 here), the same city put through the API.
        hexbook = stack.enter_context(start_stack(Path(data) / "hexbook"))
        key = _unlimited_key(hexbook.data_dir, "booking-client")
        _provision(hexbook.url, _unlimited_key(hexbook.data_dir, "operator"), first)
        systems["hexbook"] = hexbook.url
        # And with two gateway processes (`hexbook up --gateways 2`), as the peers get
        # their best worker count: the same key (its own data folder, the same city).
        two = stack.enter_context(start_stack(Path(data) / "hexbook-2gw", args=["--gateways", "2"]))
        _wait_gateways(two.log, 1)
        keys = {"hexbook": key, "hexbook-2gw": _unlimited_key(two.data_dir, "booking-client")}
        _provision(two.url, _unlimited_key(two.data_dir, "operator"), first)
        systems["hexbook-2gw"] = two.url
        # Every run gets places nobody took yet (holds are booked at once).
        runs = rounds * len(plan) * len(systems) + len(systems)
        # (each pool is drawn once: a generator's element expression runs per element)
        uniform_pool = bodies(first, per_run * runs, False, rng)
        uniform = iter([uniform_pool[i * per_run : (i + 1) * per_run] for i in range(runs)])
        # A launch each time: every skewed run of a round and concurrency has hot sites
        # of its own, the same for every system (each has its own city), so that no
        # system meets hot sites an earlier run of its emptied (the faster one would).
        hot = SITES // 20
        sites = [f"site-{i:04d}" for i in rng.sample(range(SITES), hot * rounds * 2)]
        launches = iter(
            [
                bodies(first, per_run, True, rng, sites[k * hot : (k + 1) * hot])
                for k in range(rounds * 2)
            ]
        )
        for name, url in systems.items():
            wrk(url, script_flow(keys.get(name, key), next(uniform)), 32, 2)  # warm up
        names = list(systems)
        for n in range(rounds):
            # Each round starts the rotation one system later: no system always runs
            # right after the same one (whose after-effects, a PostgreSQL checkpoint or
            # an AOF rewrite, land on the next run's disk).
            order = names[n % len(names) :] + names[: n % len(names)]
            for shape, c in plan:
                launch = next(launches) if shape == "skewed" else None
                for name in order:
                    url = systems[name]
                    if launch is None:  # as fast as it can for ``seconds``
                        r = wrk(url, script_flow(keys.get(name, key), next(uniform)), c, seconds)
                    else:  # the launch's crowd, served to the end (at most LAUNCH_BOUND s)
                        flow = script_flow(keys.get(name, key), launch, once=True)
                        r = wrk(url, flow, c, LAUNCH_BOUND)
                        if r["seconds"] >= LAUNCH_BOUND - 1:
                            print(f"   {name}: the launch was not served in {LAUNCH_BOUND} s")
                    results.setdefault((name, shape, c), []).append(r)
    return _report(results, rounds)


Results = dict[tuple[str, str, int], list[dict[str, Any]]]


def _report(results: Results, rounds: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    print(f"{'system':12} {'load':8} {'conn':>4} {'bookings/min median':>20} {'best':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'worst p99/median p99':>21}  answers")  # fmt: skip
    order = sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))
    for (name, shape, c), rs in order:
        per_min = [r["counts"].get("booking:201", 0) / r["seconds"] * 60 for r in rs]
        p99 = [r["p99_ms"] for r in rs]
        statuses: dict[str, int] = {}
        for r in rs:
            for k, v in r["counts"].items():
                if not k.endswith(":201"):
                    statuses[k] = statuses.get(k, 0) + v
        print(f"{name:12} {shape:8} {c:>4} {statistics.median(per_min):>20,.0f} "
              f"{max(per_min):>10,.0f} {statistics.median(r['p50_ms'] for r in rs):>7.1f} "
              f"{statistics.median(p99):>7.1f} {max(p99) / statistics.median(p99):>21.2f}  "
              f"{statuses or 'all 201'}")  # fmt: skip
        figures[f"peers_{name}_{shape}_{c}_bookings_per_min"] = statistics.median(per_min)
        figures[f"peers_{name}_{shape}_{c}_p99_ms"] = statistics.median(p99)
    print("targets (issue: at least 2x the strongest peer, 1 worker each at 32 connections;"
          " p99 under skew no worse than its; no round's p99 over 4x the median"
          " round's):")  # fmt: skip
    for shape, c in sorted({(k[1], k[2]) for k in results}):
        rates = {n: figures[f"peers_{n}_{shape}_{c}_bookings_per_min"]
                 for n, sh, cc in results if (sh, cc) == (shape, c)}  # fmt: skip
        peers = {n: v for n, v in rates.items() if not n.startswith("hexbook")}
        ours = {n: v for n, v in rates.items() if n.startswith("hexbook")}
        if not peers or not ours:
            continue
        best = max(peers, key=lambda n: peers[n])
        me = max(ours, key=lambda n: ours[n])  # hexbook's best gateway count, as the peers'
        one = {n: v for n, v in peers.items() if n.endswith("-1w")}
        if c <= 32 and one and "hexbook" in ours:  # the "1 worker each"
            peer, mine_name = max(one, key=lambda n: one[n]), "hexbook"
        else:
            peer, mine_name = best, me
        ratio = ours[mine_name] / peers[peer]
        p99_mine = figures[f"peers_{mine_name}_{shape}_{c}_p99_ms"]
        p99_peer = figures[f"peers_{peer}_{shape}_{c}_p99_ms"]
        rounds_p99 = [r["p99_ms"] for r in results[(mine_name, shape, c)]]
        spread = max(rounds_p99) / statistics.median(rounds_p99)
        print(f"  {shape:8} {c:>4} conn.: {mine_name} / {peer} = {ratio:.2f}x (target 2x; "
              f"best against best, {me} / {best}: {ours[me] / peers[best]:.2f}x); p99 "
              f"{p99_mine:.0f} vs {p99_peer:.0f} ms; worst round p99 / median {spread:.2f} "
              "(target <= 4)")  # fmt: skip
        figures[f"peers_ratio_{shape}_{c}"] = ratio
        figures[f"peers_ratio_best_{shape}_{c}"] = ours[me] / peers[best]
    return figures
