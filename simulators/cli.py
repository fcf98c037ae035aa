"""``hexbook-sim``: rehearse a launch before it happens.

    hexbook-sim run simulators/scenarios/chicago.toml --out build/chicago
    hexbook-sim run simulators/scenarios/small.toml --seeds 20 --out build/how-sure
    hexbook-sim sweep simulators/scenarios/small.toml --set sites.count=8,12,16 --out build/sweep
    hexbook-sim compare simulators/scenarios/chicago.toml \
        simulators/scenarios/chicago-mass-sites.toml --out build/what-if
    hexbook-sim live simulators/scenarios/small.toml --stack --speed 30 --out build/live
    hexbook-sim plan --requests-per-minute 300000 --bookings-per-minute 750 \
        --bench build/bench.json

Exit status: 0 done, 2 bad usage or a scenario that cannot be run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from simulators.scenario import Scenario, ScenarioError, load_scenario, validate
from simulators.toolkit import progress

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hexbook-sim",
        description=(
            "Capacity planning for a booking launch: simulate residents booking on "
            "hexbook's calendars from a scenario file (TOML), and write a report (HTML "
            "page, PNG plots, CSV) a planner can open. See simulators/scenarios/ for an "
            "example and docs/simulators.md for every field."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(cmd: argparse.ArgumentParser, out_default: str) -> None:
        cmd.add_argument(
            "--out",
            type=Path,
            default=Path(out_default),
            help=f"report folder, created if needed (default {out_default})",
        )
        cmd.add_argument("--seed", type=int, help="override the scenario's seed")
        cmd.add_argument(
            "--bench",
            type=Path,
            help=(
                "per-shard and per-gateway capacity from a `make bench` figures file "
                "(build/bench.json) instead of the scenario's [capacity] values"
            ),
        )
        cmd.add_argument("--quiet", action="store_true", help="no progress bar")

    run = sub.add_parser(
        "run",
        help="simulate one scenario and write its report",
        description=(
            "Simulate SCENARIO (a TOML file) and write OUT/index.html with its plots and "
            "CSV files: bookings per minute, time to book, share booked by hour, unserved "
            "demand by H3 cell, travel distance, fill rate per site, and the load, shard "
            "and node count the launch needs."
        ),
    )
    run.add_argument("scenario", type=Path, help="scenario file (TOML)")
    run.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="run N times (seeds seed, seed+1, ...) and report each key figure with its "
        "spread and 95%% interval, and bands on the time plots (OUT/spread.html)",
    )
    common(run, "build/sim")

    sweep = sub.add_parser(
        "sweep",
        help="run a scenario over several values of one field: key figures against it",
        description=(
            "Simulate SCENARIO once per value of FIELD (any scenario field: sites.count, "
            "city.population, demand.eligible_share, holds.ttl_minutes, ...; a field name "
            "found in one table alone, or 'sites', also do) and write OUT/index.html with a "
            "table and plots of the key figures against it. With --seeds, each value runs "
            "N seeds and shows the mean and its 95%% interval."
        ),
    )
    sweep.add_argument("scenario", type=Path, help="scenario file (TOML)")
    sweep.add_argument(
        "--set",
        dest="setting",
        required=True,
        metavar="FIELD=V1,V2,...",
        help="the field and its values, e.g. sites.count=200,300,400",
    )
    sweep.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per value (1)")
    common(sweep, "build/sweep")

    cmp_ = sub.add_parser(
        "compare",
        help="simulate two scenarios and put them side by side (a what-if)",
        description=(
            "Simulate A and B and write OUT/index.html comparing them (key figures side "
            "by side, overlaid curves), with each one's full report in OUT/a and OUT/b."
        ),
    )
    cmp_.add_argument("a", type=Path, help="the baseline scenario (TOML)")
    cmp_.add_argument("b", type=Path, help="the changed scenario (TOML)")
    common(cmp_, "build/compare")

    plan = sub.add_parser(
        "plan",
        help="how many gateways, shards, Redis servers and nodes a known peak needs",
        description=(
            "Plan for a peak you know (no simulation): gateway processes for the requests, "
            "shards for the holds and bookings, Redis servers for their journal events, "
            "nodes for all, each run at --utilization of what one process takes: the "
            "figures `make bench` measured (--bench build/bench.json) or the defaults. "
            "Example, Chicago's 2021 launch: --requests-per-minute 300000 "
            "--bookings-per-minute 750."
        ),
    )
    plan.add_argument("--requests-per-minute", type=float, required=True,
                      help="peak requests a minute at the gateways (searches, pages, holds, "
                      "bookings)")  # fmt: skip
    plan.add_argument("--bookings-per-minute", type=float, required=True,
                      help="peak bookings confirmed a minute")  # fmt: skip
    plan.add_argument("--holds-per-booking", type=float, default=1.2,
                      help="holds placed per booking (some lapse; default 1.2)")  # fmt: skip
    plan.add_argument("--cores-per-node", type=int, default=16, help="cores of a node (16)")
    plan.add_argument("--utilization", type=float, default=0.7,
                      help="share of a process's capacity to plan for (0.7: 30%% "
                      "headroom)")  # fmt: skip
    plan.add_argument("--bench", type=Path,
                      help="the per-process figures `make bench` measured "
                      "(build/bench.json)")  # fmt: skip

    room = sub.add_parser(
        "room",
        help="simulate a launch without and with its waiting room, side by side",
        description=(
            "Simulate SCENARIO twice, without a waiting room and with the one of its "
            "[room] table (or the defaults: 3,000 admissions a minute, 10-minute "
            "admissions, no margin, places within 10 km), and write OUT/index.html "
            "comparing them: time to book, share booked by arrival order, load on the "
            "gateway, 409s wasted, people told their area is sold out. The room decides "
            "with the gateway's own rules (engine.room)."
        ),
    )
    room.add_argument("scenario", type=Path, help="scenario file (TOML)")
    room.add_argument("--per-minute", type=int, help="admissions a minute (overrides [room])")
    room.add_argument("--margin", type=int, help="places of margin per area (overrides [room])")
    common(room, "build/room")

    live = sub.add_parser(
        "live",
        help="drive a running gateway with the scenario's residents and compare with the model",
        description=(
            "Provision the scenario's sites on a gateway (an operator key is needed), "
            "replay the model's residents over HTTP with time compressed by --speed, then "
            "write a report putting the model's prediction and the measured outcome side "
            "by side (bookings per minute, fill rate, time to book). Use a small scenario: "
            "every resident is a real client."
        ),
    )
    live.add_argument("scenario", type=Path, help="scenario file (TOML)")
    target = live.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running gateway, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--stack",
        action="store_true",
        help="start a stack of its own (hexbook up) in OUT/stack with the compressed hold time",
    )
    live.add_argument(
        "--key",
        help="operator API key for --url (default $HEXBOOK_KEY); --stack makes one",
    )
    live.add_argument(
        "--speed",
        type=float,
        default=30.0,
        help="time compression: model seconds per real second (default 30)",
    )
    live.add_argument(
        "--keep",
        action="store_true",
        help="--url: leave the run's sites, bookings and key on the gateway (by default "
        "its holds are released, bookings cancelled, sites closed and key revoked at the end)",
    )
    live.add_argument(
        "--concurrency",
        type=int,
        default=200,
        help="most residents in flight at once (default 200)",
    )
    common(live, "build/live")
    return p


def _load(path: Path, args: argparse.Namespace) -> Scenario:
    import msgspec

    s = load_scenario(path)
    if args.seed is not None:
        s = msgspec.structs.replace(s, seed=args.seed)
    if args.bench is not None:
        s = msgspec.structs.replace(s, capacity=_bench_capacity(args.bench, s))
    return s


# What `make bench` measures per process (tests/bench/run.py writes build/bench.json).
BENCH_FIGURES = (
    "shard_ops_per_second",
    "gateway_requests_per_second",
    "redis_events_per_second",
)


def plan(args: argparse.Namespace) -> int:
    """``hexbook-sim plan``: the counts for a known peak."""
    import dataclasses

    from simulators.plan import plan_for_peak
    from simulators.scenario import Capacity

    if args.cores_per_node < 1 or not 0 < args.utilization <= 1:
        raise ScenarioError("--cores-per-node must be at least 1 and --utilization in (0, 1]")
    k = Capacity(cores_per_node=args.cores_per_node, utilization=args.utilization)
    if args.bench is not None:
        k = _bench_figures(args.bench, k)
    try:
        p = plan_for_peak(
            args.requests_per_minute, args.bookings_per_minute, k, args.holds_per_booking
        )
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    where = f"measured ({args.bench})" if args.bench is not None else "defaults, not measured"
    print(
        f"capacity per process ({where}): gateway {k.gateway_requests_per_second:,.0f} "
        f"requests/s, shard {k.shard_ops_per_second:,.0f} ops/s, Redis "
        f"{k.redis_events_per_second:,.0f} journal events/s; planned at {k.utilization:.0%}"
    )
    print(
        f"peak: {p.requests_per_second:,.0f} requests/s, {p.shard_ops_per_second:,.0f} "
        "holds + bookings/s"
    )
    print(
        f"needs: {_count(p.gateways, 'gateway process', 'gateway processes')}, "
        f"{_count(p.shards, 'shard')}, {_count(p.redis_servers, 'Redis server')}, "
        f"{_count(p.nodes, 'node')} of {k.cores_per_node} cores"
    )
    if p.redis_servers > 1:
        print(_spread_note(p.redis_servers))
    print(json.dumps(dataclasses.asdict(p)))
    return 0


def _spread_note(servers: int, indent: str = "") -> str:
    more = " ".join(f"--journal-redis URL{i}" for i in range(2, servers + 1))
    return (
        f"{indent}note: spread the shards' journals over {servers} Redis servers: "
        f"`hexbook up --redis-url URL1 {more}` (docs/deployment.md)"
    )


def _bench_capacity(path: Path, s: Scenario) -> Any:
    return _bench_figures(path, s.capacity)


def _bench_figures(path: Path, k: Any) -> Any:
    """``k`` with the figures `make bench` measured (any of per-shard ops/s,
    per-gateway requests/s, per-Redis journal events/s)."""
    import msgspec

    try:
        figures = json.loads(path.read_text())
        if not set(BENCH_FIGURES) & set(figures):
            raise KeyError(f"none of {', '.join(BENCH_FIGURES)}")
        shard = float(figures.get("shard_ops_per_second", k.shard_ops_per_second))
        gateway = float(figures.get("gateway_requests_per_second", k.gateway_requests_per_second))
        redis = float(figures.get("redis_events_per_second", k.redis_events_per_second))
        if min(shard, gateway, redis) <= 0:
            raise ValueError("rates must be positive")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScenarioError(
            f"--bench {path}: not a `make bench` figures file ({exc}); run `make bench` first"
        ) from None
    return msgspec.structs.replace(
        k,
        shard_ops_per_second=shard,
        gateway_requests_per_second=gateway,
        redis_events_per_second=redis,
    )


def _run_one(s: Scenario, out: Path, quiet: bool, label: str) -> Any:
    from simulators.report import write_report
    from simulators.sim import simulate

    with progress(1000, label, not quiet) as done:
        result = simulate(s, lambda share: done(round(share * 1000)))
    page = write_report(result, out)
    return result, page


def run(args: argparse.Namespace) -> int:
    from simulators.report import plan_capacity, summary

    s = _load(args.scenario, args)
    if not 1 <= args.seeds <= 1000:
        raise ScenarioError("--seeds must be 1 to 1,000")
    if args.seeds > 1:
        return _run_seeds(s, args)
    result, page = _run_one(s, args.out, args.quiet, "simulating")
    figures = summary(result)
    plan = plan_capacity(result)
    print(f"{s.name}: simulated in {result.seconds:.1f} s")
    for key in (
        "arrivals",
        "booked",
        "gave up",
        "still trying at the end",
        "fill rate",
        "minutes until 90% of the places were booked",
        "median minutes from arrival to booking",
        "peak bookings per minute",
    ):
        value = figures[key]
        shown = (
            "not reached"
            if value is None
            else f"{value:.1%}"
            if key == "fill rate"
            else f"{value:,.1f}"
            if isinstance(value, float)
            else f"{value:,}"
        )
        print(f"  {key}: {shown}")
    print(
        f"  needs: {_count(plan.shards, 'shard') if plan.shards else 'more than 256 shards'}, "
        f"{_count(plan.gateways, 'gateway process', 'gateway processes')}, "
        f"{_count(plan.redis_servers, 'Redis server')}, "
        f"{_count(plan.nodes, 'node')} (peak {plan.peak_gateway_rps:,.0f} requests/s)"
    )
    if plan.redis_servers > 1:
        print(_spread_note(plan.redis_servers, "  "))
    print(f"report: {page}")
    return 0


def _spread_table(rows: list[Any]) -> None:
    width = max(len(x.figure) for x in rows)
    print(f"{'':{width}}  {'mean':>12}  {'95% interval':>14}  {'lowest':>10}  {'highest':>10}")
    for x in rows:
        if not x.reached:
            print(f"{x.figure:{width}}  {'not reached':>12}")
            continue
        seen = "" if x.reached == x.n else f"  (reached in {x.reached} of {x.n})"
        print(
            f"{x.figure:{width}}  {x.mean:>12,.2f}  {'± ' + format(x.ci95, ',.2f'):>14}  "
            f"{x.low:>10,.2f}  {x.high:>10,.2f}{seen}"
        )


def _run_seeds(s: Scenario, args: argparse.Namespace) -> int:
    from simulators.report import write_report
    from simulators.sweep import run_seeds, write_spread

    with progress(args.seeds, f"{args.seeds} seeds", not args.quiet) as done:
        runs = run_seeds(s, args.seeds, done)
    write_report(runs[0], args.out)
    page, rows = write_spread(runs, args.out)
    print(f"{s.name}: {args.seeds} seeds ({s.seed} to {s.seed + args.seeds - 1})")
    _spread_table(rows)
    print(f"report: {page}")
    return 0


def sweep(args: argparse.Namespace) -> int:
    from simulators.sweep import apply_setting, parse_setting, run_seeds, write_sweep

    s = _load(args.scenario, args)
    if not 1 <= args.seeds <= 1000:
        raise ScenarioError("--seeds must be 1 to 1,000")
    path, values = parse_setting(args.setting)
    scenarios = [apply_setting(s, path, v) for v in values]  # every value checked first
    runs = []
    with progress(len(values) * args.seeds, f"sweep of {path}", not args.quiet) as done:
        for i, one in enumerate(scenarios):
            runs.append(run_seeds(one, args.seeds, done, start=i * args.seeds))
    page, table = write_sweep(path, values, runs, args.out)
    keys = {
        "booked": "booked",
        "share of arrivals booked": "share booked",
        "median minutes from arrival to booking": "median min to book",
        "peak bookings per minute": "peak per minute",
        "shards needed": "shards",
    }
    print(f"{path:>16}  " + "  ".join(f"{label:>20}" for label in keys.values()))
    for value, spreads in table:
        by = {x.figure: x for x in spreads}
        cells = [
            f"{by[k].mean:,.2f}" + (f" ± {by[k].ci95:,.2f}" if args.seeds > 1 else "") for k in keys
        ]
        print(f"{value!s:>16}  " + "  ".join(f"{c:>20}" for c in cells))
    print(f"report: {page}")
    return 0


def _count(n: int, one: str, many: str | None = None) -> str:
    """``1 shard``, ``2 shards``."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def _print_rows(rows: list[tuple[str, str, str, str, str]], a: str, b: str, page: Path) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {a:>14}  {b:>14}  {a + ' - ' + b:>14}  {'relative to ' + b:>14}")
    for key, va, vb, d, rel in rows:
        print(f"{key:{width}}  {va:>14}  {vb:>14}  {d:>14}  {rel:>14}")
    print(f"report: {page}")


def compare(args: argparse.Namespace) -> int:
    from simulators.compare import write_comparison

    a = _load(args.a, args)
    b = _load(args.b, args)
    ra, _ = _run_one(a, args.out / "a", args.quiet, f"A: {a.name}")
    rb, _ = _run_one(b, args.out / "b", args.quiet, f"B: {b.name}")
    page, rows = write_comparison(ra, rb, args.out)
    _print_rows(rows, "A", "B", page)
    return 0


def room(args: argparse.Namespace) -> int:
    import msgspec

    from simulators.compare import write_comparison
    from simulators.scenario import Room

    s = _load(args.scenario, args)
    policy = s.room or Room()
    if args.per_minute is not None:
        policy = msgspec.structs.replace(policy, per_minute=args.per_minute)
    if args.margin is not None:
        policy = msgspec.structs.replace(policy, margin=args.margin)
    without = msgspec.structs.replace(s, name=f"{s.name}, no waiting room", room=None)
    with_room = msgspec.structs.replace(
        s, name=f"{s.name}, waiting room at {policy.per_minute:,}/min", room=policy
    )
    with_room = validate(with_room)  # the options too
    ra, _ = _run_one(without, args.out / "a", args.quiet, "A: no waiting room")
    rb, _ = _run_one(with_room, args.out / "b", args.quiet, "B: waiting room")
    page, rows = write_comparison(ra, rb, args.out)
    _print_rows(rows, "no room", "room", page)
    return 0


def live(args: argparse.Namespace) -> int:
    from simulators.live import run_live

    s = _load(args.scenario, args)
    key = args.key or os.environ.get("HEXBOOK_KEY") if args.url else None
    done = run_live(
        s,
        args.out,
        url=args.url,
        key=key,
        speed=args.speed,
        concurrency=args.concurrency,
        quiet=args.quiet,
        keep=args.keep,
    )
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{'':26}{'model':>12}{'live':>12}{'diff':>9}")
    for k, m, v, d in done.rows:
        print(f"{k:26}{m:12,.3g}{v:12,.3g}{d:+9.1%}")
    if done.live.errors:
        print(f"{len(done.live.errors)} errors, first: {done.live.errors[0]}")
    print(f"report: {done.page}")
    return 0


def _missing_extra() -> str | None:
    """What to install when this tool's own packages (the ``sim`` extra) are missing."""
    import importlib.util

    missing = [m for m in ("matplotlib", "tqdm") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"hexbook-sim needs {', '.join(missing)}: pip install 'hexbook[sim]' "
        "(make install brings it)"
    )


def main(argv: list[str] | None = None) -> int:
    if (missing := _missing_extra()) is not None:
        print(f"hexbook-sim: {missing}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    try:
        handlers = {"run": run, "compare": compare, "room": room, "live": live, "sweep": sweep}
        handler = {**handlers, "plan": plan}[args.command]
        return handler(args)
    except ScenarioError as exc:
        print(f"hexbook-sim: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a stack that did not start, a gateway that refused
        print(f"hexbook-sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hexbook-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
