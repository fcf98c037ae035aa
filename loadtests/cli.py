"""``hexbook-load``: a launch load test with a verdict.

    hexbook-load --stack --shape spike --duration 3m --users 300
    hexbook-load --url https://gw.example --key hbk_... --redis-url redis://... --shape steady

Runs Locust headless (the users of ``loadtests/locustfile.py``) against a gateway, or
against a stack it starts itself (``--stack``: ``hexbook up --demo`` in the run folder),
writes Locust's CSV and HTML report to the run folder, prints a table per endpoint,
shows the figures while it runs (in place on a terminal, a line every 5 s otherwise),
checks the URL and key before it starts, names failures by reason (status and problem
code), checks the thresholds, then runs the audit (``hexbook audit``) over the journals with
the bookings the users saw acknowledged. Exit status: 0 healthy, 1 a threshold broken
or an audit violation, 2 bad usage (an unreachable URL, a refused key). ``verdict.json``
in the run folder carries every threshold with its measured value.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loadtests.reasons import clean
from simulators.toolkit import LocalStack, duration_type, free_port, start_stack

__all__ = [
    "Thresholds",
    "check_thresholds",
    "main",
    "preflight",
    "read_failures",
    "read_stats",
    "threshold_checks",
]

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
HEAD = f"{'endpoint':42} {'requests':>9} {'fail':>6} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6}"


@dataclass
class Thresholds:
    max_error_ratio: float = 0.01
    p95_ms: float = 1000.0
    p99_ms: float = 2000.0
    per_endpoint: dict[str, dict[str, float]] | None = None


def _number(text: str | None) -> float:
    """A figure of Locust's CSV: ``N/A`` (no answer to time) and blanks are 0."""
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def read_failures(path: Path) -> list[dict[str, Any]]:
    """Rows of Locust's ``*_failures.csv``: endpoint, reason, count (most first)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [
            {"name": r["Name"], "reason": clean(r["Error"]), "count": int(r["Occurrences"])}
            for r in csv.DictReader(f)
        ]
    return sorted(rows, key=lambda r: -int(r["count"]))


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
                    "rps": _number(row["Requests/s"]),
                    "p50": _number(row["50%"]),
                    "p95": _number(row["95%"]),
                    "p99": _number(row["99%"]),
                }
            )
    return rows


def threshold_checks(rows: list[dict[str, Any]], t: Thresholds) -> list[dict[str, Any]]:
    """Every threshold with its limit and what was measured: the error ratio over real
    requests (expected 409s and give-ups are on ``EXPECTED`` rows, not counted), and p95
    and p99 per endpoint. Each check has ``name``, ``limit``, ``measured``, ``unit``, ``ok``."""
    real = [r for r in rows if r["type"] not in ("EXPECTED", "") and r["name"] != "Aggregated"]
    total = sum(r["requests"] for r in real)
    failures = sum(r["failures"] for r in real)
    ratio = failures / total if total else 0.0
    checks = [
        {"name": "requests made", "limit": 1, "measured": total, "unit": "requests",
         "ok": total > 0},
        {"name": "error ratio", "limit": t.max_error_ratio, "measured": round(ratio, 6),
         "unit": "ratio", "ok": ratio <= t.max_error_ratio},
    ]  # fmt: skip
    for r in real:
        limits = {"p95": t.p95_ms, "p99": t.p99_ms, **(t.per_endpoint or {}).get(r["name"], {})}
        for q in ("p95", "p99"):
            checks.append({"name": f"{r['name']}: {q}", "limit": limits[q], "measured": r[q],
                           "unit": "ms", "ok": r[q] <= limits[q]})  # fmt: skip
    return checks


def check_thresholds(rows: list[dict[str, Any]], t: Thresholds) -> list[str]:
    """What broke, one line each (the failed :func:`threshold_checks`)."""
    broken = []
    for c in threshold_checks(rows, t):
        if c["ok"]:
            continue
        if c["name"] == "requests made":
            broken.append("no requests were made")
        elif c["unit"] == "ratio":
            broken.append(f"error ratio {c['measured']:.2%} > {c['limit']:.2%}")
        else:
            broken.append(f"{c['name']} {c['measured']:.0f} ms > {c['limit']:.0f} ms")
    return broken


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [HEAD, "-" * len(HEAD)]
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
    p.add_argument(
        "--duration", type=duration_type(5), default=60.0, help="e.g. 30s, 3m (60s, at least 5s)"
    )
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
    p.add_argument(
        "--ui",
        action="store_true",
        help="run with Locust's web UI (its address is printed; the run starts at once)",
    )
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


def preflight(url: str, key: str, timeout: float = 10.0) -> str | None:
    """Why a run against ``url`` with ``key`` cannot work, in one line (None: it can).
    The gateway must answer ``/readyz`` and take the key as a booking client."""
    import httpx

    try:
        ready = httpx.get(f"{url}/readyz", timeout=timeout)
    except httpx.InvalidURL as exc:
        return f"{url!r} is not a URL: {exc}"
    except httpx.HTTPError as exc:
        return f"cannot reach {url}: {type(exc).__name__} ({exc or 'no answer'})"
    if ready.status_code == 404:
        return f"{url} answers, but is not a hexbook gateway (no /readyz)"
    if ready.status_code != 200:
        return f"{url} is not ready: /readyz answered {ready.status_code} {ready.text[:200]}"
    try:  # a booking nobody has: a good key gets 404, a bad one 401, a wrong role 403
        r = httpx.get(
            f"{url}/v1/bookings/bk_preflight",
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        return f"cannot reach {url}: {type(exc).__name__} ({exc or 'no answer'})"
    if r.status_code in (401, 403):
        try:
            detail = str(r.json().get("detail", ""))
        except ValueError:
            detail = r.text[:200]
        what = "refused" if r.status_code == 401 else "not a booking-client key"
        return f"the key was {what} by {url} ({r.status_code}: {detail})"
    return None


class Console:
    """The run as it goes, from the snapshot the users write every second
    (``live.json``): in place on a terminal, a line every ``every`` seconds otherwise."""

    def __init__(self, path: Path, tty: bool, every: float = 5.0) -> None:
        self.path, self.tty, self.every = path, tty, every
        self.started = time.monotonic()
        self.last_line = -every
        self.drawn = 0

    def read(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return None

    def tick(self) -> None:
        snap = self.read()
        if snap is None:
            return
        elapsed = time.monotonic() - self.started
        if self.tty:
            lines = self.screen(snap, elapsed)
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            sys.stdout.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            sys.stdout.flush()
            self.drawn = len(lines)
        elif elapsed - self.last_line >= self.every:
            self.last_line = elapsed
            print(self.line(snap, elapsed), flush=True)

    @staticmethod
    def line(snap: dict[str, Any], elapsed: float) -> str:
        t = snap["total"]
        top = snap["failures"][0] if snap["failures"] else None
        why = f" (most: {top['reason']} on {top['name']}, {top['count']:,})" if top else ""
        return (
            f"  {elapsed:4.0f} s  {snap['users']:>5} users  {t['rps']:>8.1f} req/s  "
            f"p50 {t['p50']:.0f} ms  p95 {t['p95']:.0f} ms  p99 {t['p99']:.0f} ms  "
            f"{t['requests']:,} requests  {t['failures']:,} failed{why}"
        )

    @staticmethod
    def screen(snap: dict[str, Any], elapsed: float) -> list[str]:
        lines = [Console.line(snap, elapsed), HEAD]
        for r in snap["rows"]:
            name = r["name"] if r["type"] != "EXPECTED" else f"({r['name']})"
            lines.append(
                f"{name[:42]:42} {r['requests']:>9,} {r['failures']:>6,} {r['rps']:>8.1f} "
                f"{r['p50']:>6.0f} {r['p95']:>6.0f} {r['p99']:>6.0f}"
            )
        for f in snap["failures"][:5]:
            lines.append(f"  failed: {f['count']:>7,}  {f['reason']}  ({f['name']})")
        return lines


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


def _failure_table(failures: list[dict[str, Any]]) -> str:
    lines = ["failures by reason (status and problem code):"]
    for f in failures[:15]:
        lines.append(f"  {f['count']:>8,}  {f['reason'][:60]:60}  {f['name']}")
    if len(failures) > 15:
        lines.append(f"  ... {len(failures) - 15} more reasons in locust_failures.csv")
    return "\n".join(lines)


def _locust(
    args: argparse.Namespace, folder: Path, url: str, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes] | int:
    """Run Locust (headless, or with its web UI for --ui) while the console shows the
    figures; its exit code."""
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", url,
        "--csv", str(folder / "locust"), "--html", str(folder / "report.html"),
        "--stop-timeout", "10", "--exit-code-on-error", "0", "--loglevel", "WARNING",
    ]  # fmt: skip
    if args.ui:
        port = free_port()
        cmd += ["--autostart", "--autoquit", "5", "--web-host", "127.0.0.1",
                "--web-port", str(port)]  # fmt: skip
        print(f"hexbook-load: Locust's web UI at http://127.0.0.1:{port} (the run starts now)")
    else:
        cmd += ["--headless", "--only-summary"]
    console = Console(folder / "live.json", sys.stdout.isatty())
    with open(folder / "locust.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                console.tick()
                time.sleep(1)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # Locust writes its report and stops
            proc.wait(timeout=60)
            raise
    console.tick()
    return proc.returncode


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
    if args.url:
        args.url = args.url.rstrip("/")
        if (why := preflight(args.url, args.key)) is not None:
            print(f"hexbook-load: {why}", file=sys.stderr)
            return 2
    folder = args.out or Path("runs") / f"load-{datetime.now():%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    shape = args.shape or "spike"
    print(f"hexbook-load: {shape}, peak {args.users} users, {args.duration:.0f} s -> {folder}")
    stack: LocalStack | None = None
    try:
        if args.stack:
            stack = start_stack(
                folder, demo_sites=args.sites, echo=lambda line: print(f"  stack: {line}")
            )
            url, key = stack.url, stack.keys["booking-client"]
        else:
            url, key = args.url, args.key
        operator = args.operator_key
        if args.room:
            if stack is not None:
                operator = stack.key("operator", "hexbook-load")
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
            "HEXBOOK_LOAD_LIVE": str(folder / "live.json"),
        }
        if args.city:
            env["HEXBOOK_LOAD_CITY"] = str(args.city.resolve())
        if _locust(args, folder, url, env) != 0:
            print(f"hexbook-load: locust failed; see {folder / 'locust.log'}", file=sys.stderr)
            return 1
        rows = read_stats(folder / "locust_stats.csv")
        print(_table(rows))
        failures = read_failures(folder / "locust_failures.csv")
        if failures:
            print(_failure_table(failures))
        from actors.audit import read_acks

        acks = read_acks(sorted((folder / "acks").glob("*.jsonl")))
        booked = sum(1 for a in acks if a.get("op") == "booked")
        print(
            f"bookings acknowledged: {booked:,}   peak per minute: {peak_per_minute(acks):,}   "
            f"report: {folder / 'report.html'}"
        )
        if args.room and operator:
            print(room_figures(url, operator, args.room))
        checks = threshold_checks(rows, thresholds)
        broken = check_thresholds(rows, thresholds)
        for b in broken:
            print(f"THRESHOLD BROKEN: {b}")
        audit_ok = True
        if not args.no_audit:
            audit_ok = _audit(args, folder, acks)
        verdict = not broken and audit_ok
        summary = {
            "pass": verdict,
            "thresholds": checks,
            "thresholds_broken": broken,
            "failures": failures,
            "audit_ok": audit_ok,
            "bookings": booked,
            "peak_per_minute": peak_per_minute(acks),
        }
        (folder / "verdict.json").write_text(json.dumps(summary, indent=2))
        print("hexbook-load: PASS" if verdict else "hexbook-load: FAIL")
        return 0 if verdict else 1
    except RuntimeError as exc:
        print(f"hexbook-load: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hexbook-load: interrupted", file=sys.stderr)
        return 130
    finally:
        if stack is not None:
            stack.stop()


def _audit(args: argparse.Namespace, folder: Path, acks: list[dict[str, Any]]) -> bool:
    import redis

    from actors.audit import audit
    from actors.embedded_redis import redis_endpoint
    from engine.errors import KeyringError
    from gateway.settings import Settings, data_keyring

    if args.url and not (args.redis_url or args.data_dir):
        print("audit: skipped (give --redis-url or --data-dir to audit a --url run)")
        return True
    data_dir = args.data_dir or folder / "data"
    embedded = not (args.redis_url or os.environ.get("REDIS_URL"))
    try:  # the keys that open what the shards sealed (docs/security.md)
        ring = data_keyring(Settings(data_dir=data_dir), embedded=embedded)
    except KeyringError as exc:
        print(f"audit: {exc}")
        return False
    with redis_endpoint(args.redis_url, data_dir, attach=True) as url:
        client = redis.Redis.from_url(url)
        try:
            report = audit(client, acks, ring)
        finally:
            client.close()
    print(report.summary())
    (folder / "audit.txt").write_text(report.summary() + "\n")
    return report.ok


if __name__ == "__main__":
    raise SystemExit(main())
