"""hexbook benchmarks: print figures and their targets, measured in one run.

    make bench                 # every part
    .venv/bin/python tests/bench/run.py --part engine --rounds 7

The machine is shared and noisy, so throughput is measured over several rounds and the
best and the median are printed (best is the least disturbed; the median is typical).
Nothing here is asserted by the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine import codec  # noqa: E402
from engine.calendar import Calendar  # noqa: E402
from engine.records import ConfirmHold, PlaceHold  # noqa: E402
from engine.schedule import WEEKDAYS, WeeklyTemplate  # noqa: E402

TEMPLATE = WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 2)
FIRST_DAY = date(2026, 3, 2)


def _calendars(n: int) -> list[Calendar]:
    return [
        Calendar.from_template(f"p{i}", "vaccine", "America/Chicago", TEMPLATE, FIRST_DAY, 14)
        for i in range(n)
    ]


def hold_confirm_round(pairs_per_calendar: int, calendars: int, encode: bool) -> float:
    """One round: every calendar gets holds then confirms on its open slots; returns pairs/s.

    Ids are random 128-bit tokens made beforehand (they arrive with the request in real
    life); commands are built inside the timed loop, events are drained per calendar as
    a shard drains a batch, and (``encode``) turned into one msgpack journal entry."""
    cals = _calendars(calendars)
    plans = []
    for cal in cals:
        open_starts = cal.starts()[cal.capacity > 0]
        starts = np.repeat(open_starts, 2)[:pairs_per_calendar].tolist()
        ids = [
            (
                secrets.token_urlsafe(16),
                secrets.token_urlsafe(16),
                secrets.token_urlsafe(16),
                secrets.token_urlsafe(16),
            )
            for _ in starts
        ]
        plans.append((cal, starts, ids))
    gc.collect()
    gc.freeze()  # the harness's own ids are not the engine's: keep them out of GC scans
    t0 = time.perf_counter()
    n = 0
    for cal, starts, ids in plans:
        handle, pid, now = cal.handle, cal.provider_id, cal.start - 3600
        for start, (hk, hid, ck, bid) in zip(starts, ids, strict=True):
            handle(PlaceHold(pid, "vaccine", hk, now, hid, start, 1, 300))
            handle(ConfirmHold(pid, "vaccine", ck, now, hid, bid, b"", "patient"))
            n += 1
        events = cal.drain()
        if encode:
            codec.encode(events)
    elapsed = time.perf_counter() - t0
    gc.unfreeze()
    return n / elapsed


def _measure(fn: Callable[[], float], rounds: int) -> tuple[float, float]:
    results = [fn() for _ in range(rounds)]
    return max(results), statistics.median(results)


MEMORY_PROBE = """
import gc, json, sys, psutil
sys.path.insert(0, {root!r})
from datetime import date
from engine.calendar import Calendar
from engine.schedule import WEEKDAYS, WeeklyTemplate
import numpy as np
proc = psutil.Process()
t = WeeklyTemplate.uniform(WEEKDAYS, "08:00", "20:00", 2)
Calendar.from_template("warm", "vaccine", "America/Chicago", t, date(2026, 3, 2), 14)
gc.collect()
before = proc.memory_info().rss
cals = [Calendar.from_template(f"p{{i}}", "vaccine", "America/Chicago", t,
                               date(2026, 3, 2), 14) for i in range({n})]
gc.collect()
after = proc.memory_info().rss
print(json.dumps({{"before": before, "after": after, "slots": cals[0].n_slots}}))
"""


def memory_of_calendars(n: int) -> dict[str, int]:
    """RSS of a fresh process before and after building ``n`` calendars."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE.format(root=str(ROOT), n=n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def part_engine(rounds: int) -> None:
    print("== engine: in-process, one core")
    best, median = _measure(lambda: hold_confirm_round(400, 500, encode=False), rounds)
    print(
        f"hold+confirm pairs/s (events + idempotency on)   best {best:>10,.0f}  "
        f"median {median:>10,.0f}   target >= 250,000  -> {best / 250_000:.2f}x"
    )
    best_e, median_e = _measure(lambda: hold_confirm_round(400, 500, encode=True), rounds)
    print(
        f"  ... and events msgpack-encoded for the journal best {best_e:>10,.0f}  "
        f"median {median_e:>10,.0f}"
    )
    mem = memory_of_calendars(10_000)
    delta = (mem["after"] - mem["before"]) / 2**20
    print(
        f"RSS of 10,000 calendars x {mem['slots']} slots (14 days, 15 min)  "
        f"{delta:7.1f} MB   target < 150 MB  -> {delta / 150:.2f} of budget "
        f"(process total {mem['after'] / 2**20:.1f} MB)"
    )


PARTS = {"engine": part_engine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run hexbook's benchmarks and print figures against their targets.",
    )
    parser.add_argument(
        "--part",
        choices=sorted(PARTS),
        action="append",
        help="run only this part (repeatable); default: all",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds per throughput figure (default 5; best and median shown)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for name in args.part or PARTS:
        PARTS[name](args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
