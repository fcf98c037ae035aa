"""``hexbook-load``: a launch load test with a verdict.

    hexbook-load --stack --shape spike --duration 3m --users 300
    hexbook-load --url https://gw.example --key hbk_... --redis-url redis://... --shape steady

Runs Locust headless (the users of ``loadtests/locustfile.py``) against a gateway, or
against a stack it starts itself (``--stack``: ``hexbook up --demo`` in the run folder),
writes Locust's CSV and HTML report to the run folder, prints a table per endpoint,
checks the thresholds, then runs the audit (``hexbook audit``) over the journals with
the bookings the users saw acknowledged. Exit status: 0 healthy, 1 a threshold broken
or an audit violation, 2 bad usage.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.stack import free_port, stop_stack, wait_ready

__all__ = ["Thresholds", "check_thresholds", "main", "parse_duration", "read_stats"]

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``1h30m`` -> seconds."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or m is None or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 3m, 1h)")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    seconds = h * 3600 + mi * 60 + s
    if seconds < 5:
        raise argparse.ArgumentTypeError("a run lasts at least 5 s")
    return float(seconds)


@dataclass
class Thresholds:
    max_error_ratio: float = 0.01
    p95_ms: float = 1000.0
    p99_ms: float = 2000.0
    per_endpoint: dict[str, dict[str, float]] | None = None


def read_stats(path: Path) -> list[dict[str, Any]]:
    """Rows of Locust's ``*_stats.csv``: name, type, requests, failures, p50/p95/p99."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append(
                {
                    "type": row["Type"],
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50": float(row["50%"] or 0),
                    "p95": float(row["95%"] or 0),
                    "p99": float(row["99%"] or 0),
                }
            )
    return rows


def check_thresholds(rows: list[dict[str, Any]], t: Thresholds) -> list[str]:
    """What broke: the error ratio over real requests (expected 409s and give-ups are
    on ``EXPECTED`` rows, not counted), and p95 / p99 per endpoint."""
    broken = []
    real = [r for r in rows if r["type"] not in ("EXPECTED", "") and r["name"] != "Aggregated"]
    total = sum(r["requests"] for r in real)
    failures = sum(r["failures"] for r in real)
    ratio = failures / total if total else 0.0
    if total == 0:
        broken.append("no requests were made")
    if ratio > t.max_error_ratio:
        broken.append(f"error ratio {ratio:.2%} > {t.max_error_ratio:.2%}")
    for r in real:
        limits = {"p95": t.p95_ms, "p99": t.p99_ms, **(t.per_endpoint or {}).get(r["name"], {})}
        for q in ("p95", "p99"):
            if r[q] > limits[q]:
                broken.append(f"{r['name']}: {q} {r[q]:.0f} ms > {limits[q]:.0f} ms")
    return broken


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'endpoint':42} {'requests':>9} {'fail':>6} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        name = r["name"] if r["type"] != "EXPECTED" else f"({r['name']})"
        lines.append(
            f"{name[:42]:42} {r['requests']:>9,} {r['failures']:>6,} {r['rps']:>8.1f} "
            f"{r['p50']:>6.0f} {r['p95']:>6.0f} {r['p99']:>6.0f}"
        )
    return "\n".join(lines) + "\n(times in ms; rows in brackets are expected outcomes)"


def peak_per_minute(acks: list[dict[str, Any]]) -> int:
    """The most bookings acknowledged within any 60 s window."""
    times = sorted(a["t"] for a in acks if a.get("op") == "booked" and "t" in a)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > 60:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hexbook-load",
        description="Run a launch load test (Locust, headless) against a hexbook gateway, "
        "report per endpoint, check thresholds, and audit the journals. Exit 0 when "
        "healthy, 1 when a threshold is broken or the audit finds a violation.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the gateway to load (e.g. http://127.0.0.1:8000)")
    target.add_argument(
        "--stack",
        action="store_true",
        help="start a local stack (hexbook up --demo) in the run folder, load it, stop it",
    )
    p.add_argument(
        "--key",
        default=os.environ.get("HEXBOOK_KEY"),
        help="booking-client API key for --url (default $HEXBOOK_KEY); --stack makes one",
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument(
        "--spike",
        dest="shape",
        action="store_const",
        const="spike",
        help="a launch: ramp to the peak in a minute, hold, decay (the default)",
    )
    shape.add_argument("--shape", choices=["spike", "steady", "step"], help="the load shape")
    p.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 30s, 3m (60s)")
    p.add_argument("--users", type=int, default=100, help="peak simultaneous users (100)")
    p.add_argument(
        "--weights",
        default="",
        help="behaviour weights, e.g. searcher=5,booker=4,changer=1,feed=1 "
        "(defaults: searcher=5,booker=4,changer=1,feed=0)",
    )
    p.add_argument("--service", default="covid-vaccine", help="service to book (covid-vaccine)")
    p.add_argument("--city", type=Path, help="CSV of H3 cells and population (cell,population)")
    p.add_argument("--out", type=Path, help="run folder (default runs/load-<time>)")
    p.add_argument("--sites", type=int, default=1500, help="--stack: demo city size (1500)")
    p.add_argument(
        "--max-error-ratio", type=float, default=0.01, help="failed/all, 409s excluded (0.01)"
    )
    p.add_argument("--p95-ms", type=float, default=1000.0, help="p95 limit per endpoint (1000)")
    p.add_argument("--p99-ms", type=float, default=2000.0, help="p99 limit per endpoint (2000)")
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME:pXX=MS",
        help="a limit for one endpoint, e.g. 'GET /v1/search:p99=100' (repeatable)",
    )
    p.add_argument("--redis-url", help="--url: the deployment's Redis, for the audit")
    p.add_argument(
        "--data-dir", type=Path, help="--url: a local stack's data folder, for the audit"
    )
    p.add_argument("--no-audit", action="store_true", help="skip the audit")
    room = p.add_argument_group(
        "waiting room",
        "a launch through a waiting room: bookers and changers join it, wait for their "
        "admission and hold with it (docs/api.md, 'A launch through the waiting room')",
    )
    room.add_argument("--room", metavar="ROOM_ID", help="go through this waiting room")
    room.add_argument(
        "--room-rate",
        type=int,
        default=600,
        help="admissions a minute of a room this tool opens (600)",
    )
    room.add_argument(
        "--operator-key",
        default=os.environ.get("HEXBOOK_OPERATOR_KEY"),
        help="--url: an operator key to open the room when it does not exist and to read "
        "its figures (default $HEXBOOK_OPERATOR_KEY); --stack makes one",
    )
    return p


def open_room(url: str, operator_key: str, room_id: str, service: str, rate: int) -> None:
    """Open ``room_id`` for ``service`` over the whole city (opening in 10 s), unless it
    exists; one place per visitor id (every simulated user shares a key and address)."""
    import httpx

    headers = {"Authorization": f"Bearer {operator_key}"}
    if httpx.get(f"{url}/v1/rooms/{room_id}", headers=headers, timeout=30).status_code == 200:
        return
    opens = datetime.now(UTC) + timedelta(seconds=10)
    body = {"room_id": room_id, "service": service, "lat": 41.85, "lng": -87.68,
            "radius_km": 60, "opens_at": opens.isoformat(timespec="seconds"),
            "per_minute": rate, "near_km": 10, "one_per": ["visitor"]}  # fmt: skip
    r = httpx.post(f"{url}/v1/rooms", json=body, headers=headers, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"could not open room {room_id!r}: {r.status_code} {r.text[:300]}")
    print(f"hexbook-load: room {room_id!r} opens at {body['opens_at']}, {rate:,}/min")


def room_figures(url: str, operator_key: str, room_id: str) -> str:
    import httpx

    r = httpx.get(f"{url}/v1/rooms/{room_id}", headers={"Authorization": f"Bearer {operator_key}"})
    if r.status_code != 200:
        return f"room {room_id}: {r.status_code} {r.text[:200]}"
    f = r.json()
    return (
        f"room {room_id}: {f['joined']:,} joined, {f['admitted']:,} admitted, "
        f"{f['holding']:,} holding, {f['expired']:,} admissions unused, "
        f"{f['sold_out']:,} told sold out, {f['waiting']:,} still waiting"
    )


def _operator_key(folder: Path) -> str:
    """A fresh operator key for the stack this tool started (its data folder)."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "create", "--role", "operator",
         "--name", "hexbook-load", "--data-dir", str(folder / "data")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"hbk_[A-Za-z0-9_-]+", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"could not make an operator key: {done.stderr[-300:]}")
    return found.group(0)


def _start_stack(folder: Path, sites: int) -> tuple[subprocess.Popen[str], str, str]:
    port = free_port()
    log = open(folder / "stack.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "up", "--demo", "--sites", str(sites),
         "--data-dir", str(folder / "data"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    key = ""
    for line in proc.stdout:
        print(f"  stack: {line.rstrip()}", flush=True)
        if "booking-client key" in line:
            key = line.split(": ", 1)[1].strip()
            break
    if not key:
        raise RuntimeError(f"the stack did not start; see {folder / 'stack.log'}")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, folder / "stack.log")
    return proc, url, key


def _per_endpoint(specs: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for spec in specs:
        m = re.fullmatch(r"(.+):(p95|p99)=(\d+(?:\.\d+)?)", spec)
        if m is None:
            raise argparse.ArgumentTypeError(f"--threshold {spec!r}: use 'NAME:p99=MS'")
        out.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
    return out


def _weights(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in ("searcher", "booker", "changer", "feed") or not value.isdigit():
            raise argparse.ArgumentTypeError(f"--weights: bad part {part!r}")
        out[name] = int(value)
    return out


def _missing_extra() -> str | None:
    """What to install when this tool's own packages (the ``load`` extra) are missing."""
    import importlib.util

    missing = [m for m in ("locust",) if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"hexbook-load needs {', '.join(missing)}: pip install 'hexbook[load]' "
        "(make install brings it)"
    )


def main(argv: list[str] | None = None) -> int:
    if (missing := _missing_extra()) is not None:
        print(f"hexbook-load: {missing}", file=sys.stderr)
        return 2
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        thresholds = Thresholds(
            args.max_error_ratio, args.p95_ms, args.p99_ms, _per_endpoint(args.threshold)
        )
        weights = _weights(args.weights)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.users < 1:
        parser.error("--users must be at least 1")
    if not 1 <= args.room_rate <= 1_000_000:
        parser.error("--room-rate must be 1 to 1,000,000 admissions a minute")
    if args.url and not args.key:
        parser.error("--url needs a booking-client key: --key or $HEXBOOK_KEY")
    folder = args.out or Path("runs") / f"load-{datetime.now():%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    shape = args.shape or "spike"
    print(f"hexbook-load: {shape}, peak {args.users} users, {args.duration:.0f} s -> {folder}")
    stack = None
    try:
        if args.stack:
            stack, url, key = _start_stack(folder, args.sites)
        else:
            url, key = args.url, args.key
        operator = args.operator_key
        if args.room:
            if args.stack:
                operator = _operator_key(folder)
            if operator:
                open_room(url, operator, args.room, args.service, args.room_rate)
        env = {
            **os.environ,
            "HEXBOOK_LOAD_KEY": key,
            "HEXBOOK_LOAD_SHAPE": shape,
            "HEXBOOK_LOAD_USERS": str(args.users),
            "HEXBOOK_LOAD_SECONDS": str(args.duration),
            "HEXBOOK_LOAD_WEIGHTS": json.dumps(weights),
            "HEXBOOK_LOAD_ACKS": str(folder / "acks"),
            "HEXBOOK_LOAD_SERVICE": args.service,
            "HEXBOOK_LOAD_ROOM": args.room or "",
        }
        if args.city:
            env["HEXBOOK_LOAD_CITY"] = str(args.city.resolve())
        cmd = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", url, "--csv", str(folder / "locust"), "--html", str(folder / "report.html"),
            "--only-summary", "--stop-timeout", "10", "--exit-code-on-error", "0",
            "--loglevel", "WARNING",
        ]  # fmt: skip
        with open(folder / "locust.log", "w") as log:
            done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            print(f"hexbook-load: locust failed; see {folder / 'locust.log'}", file=sys.stderr)
            return 1
        rows = read_stats(folder / "locust_stats.csv")
        print(_table(rows))
        from actors.audit import read_acks

        acks = read_acks(sorted((folder / "acks").glob("*.jsonl")))
        booked = sum(1 for a in acks if a.get("op") == "booked")
        print(
            f"bookings acknowledged: {booked:,}   peak per minute: {peak_per_minute(acks):,}   "
            f"report: {folder / 'report.html'}"
        )
        if args.room and operator:
            print(room_figures(url, operator, args.room))
        broken = check_thresholds(rows, thresholds)
        for b in broken:
            print(f"THRESHOLD BROKEN: {b}")
        audit_ok = True
        if not args.no_audit:
            audit_ok = _audit(args, folder, acks)
        verdict = not broken and audit_ok
        summary = {"thresholds_broken": broken, "audit_ok": audit_ok, "bookings": booked,
                   "peak_per_minute": peak_per_minute(acks)}  # fmt: skip
        (folder / "verdict.json").write_text(json.dumps(summary, indent=2))
        print("hexbook-load: PASS" if verdict else "hexbook-load: FAIL")
        return 0 if verdict else 1
    except RuntimeError as exc:
        print(f"hexbook-load: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stop_stack(stack)


def _audit(args: argparse.Namespace, folder: Path, acks: list[dict[str, Any]]) -> bool:
    import redis

    from actors.audit import audit
    from actors.embedded_redis import redis_endpoint

    if args.url and not (args.redis_url or args.data_dir):
        print("audit: skipped (give --redis-url or --data-dir to audit a --url run)")
        return True
    data_dir = args.data_dir or folder / "data"
    with redis_endpoint(args.redis_url, data_dir, attach=True) as url:
        client = redis.Redis.from_url(url)
        try:
            report = audit(client, acks)
        finally:
            client.close()
    print(report.summary())
    (folder / "audit.txt").write_text(report.summary() + "\n")
    return report.ok


if __name__ == "__main__":
    raise SystemExit(main())
