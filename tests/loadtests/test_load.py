"""hexbook-load end to end (a short spike against a stack it starts, with the audit),
and its parts: shapes, thresholds, durations; and no Ray in the load generator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtests.cli import Thresholds, check_thresholds, peak_per_minute, read_stats
from loadtests.curves import users_at
from simulators.toolkit import LocalStack, free_port, parse_duration
from tests.polling import until


def test_a_short_spike_passes_thresholds_and_audit(child_stack: LocalStack, tmp_path: Path) -> None:
    """Against a running stack (``--url``, audited through its ``--data-dir``); the room
    test below has the tool start its own (``--stack``)."""
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable, "-m", "loadtests.cli", "--url", child_stack.url,
            "--key", child_stack.keys["booking-client"], "--data-dir", str(child_stack.data_dir),
            "--spike", "--duration", "30s", "--users", "40",
            "--weights", "searcher=4,booker=4,changer=2,feed=1", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict == {**verdict, "thresholds_broken": [], "audit_ok": True}
    assert verdict["bookings"] > 20
    assert "violations               0" in (out / "audit.txt").read_text()
    assert (out / "audit.txt").read_text().startswith("audit: 1 shard, ")  # 1 on 2 cores
    assert (out / "report.html").stat().st_size > 10_000
    rows = {r["name"]: r for r in read_stats(out / "locust_stats.csv")}
    for name in ("GET /v1/search", "POST /v1/holds", "POST /v1/bookings", "GET /v1/feed (10 s)"):
        assert rows[name]["requests"] > 0, name
    assert "hexbook-load: PASS" in done.stdout
    # While it ran, the console showed the figures so far (a line every 5 s: no terminal)
    live = [
        re.match(r"\s+(\d+) s\s+(\d+) users\s+([\d.]+) req/s\s+p50 \d+ ms.*?([\d,]+) requests", ln)
        for ln in done.stdout.splitlines()
    ]
    seen = [(int(m[1]), int(m[2]), int(m[4].replace(",", ""))) for m in live if m]
    assert len(seen) >= 3, done.stdout[-3000:]
    assert any(0 < t < 30 and users > 0 and n > 0 for t, users, n in seen), seen
    assert [n for _, _, n in seen] == sorted(n for _, _, n in seen)  # requests only grow
    # The verdict carries every threshold with what was measured.
    checks = {c["name"]: c for c in verdict["thresholds"]}
    assert checks["error ratio"]["ok"] and checks["error ratio"]["limit"] == 0.01
    p99 = checks["POST /v1/holds: p99"]
    assert p99["limit"] == 2000 and p99["measured"] == rows["POST /v1/holds"]["p99"]
    # The same run judged by limits it cannot meet is a failure, by name.
    broken = check_thresholds(list(rows.values()), Thresholds(p99_ms=0.01))
    assert any(b.startswith("POST /v1/holds: p99") for b in broken)


def test_thresholds_exclude_expected_409s_and_count_failures() -> None:
    rows = [
        {"type": "POST", "name": "POST /v1/holds", "requests": 100, "failures": 0,
         "rps": 1, "p50": 5, "p95": 9, "p99": 12},
        {"type": "EXPECTED", "name": "409 hold taken", "requests": 400, "failures": 0,
         "rps": 1, "p50": 5, "p95": 9, "p99": 5000},
        {"type": "GET", "name": "GET /v1/search", "requests": 100, "failures": 3,
         "rps": 1, "p50": 5, "p95": 9, "p99": 150},
    ]  # fmt: skip
    assert check_thresholds(rows, Thresholds(max_error_ratio=0.02, p99_ms=200)) == []
    broken = check_thresholds(
        rows,
        Thresholds(max_error_ratio=0.01, per_endpoint={"GET /v1/search": {"p99": 100}}),
    )
    assert broken == ["error ratio 1.50% > 1.00%", "GET /v1/search: p99 150 ms > 100 ms"]
    assert check_thresholds([], Thresholds()) == ["no requests were made"]


def test_spike_ramps_holds_and_decays() -> None:
    users = [users_at("spike", t, 300, 180) for t in range(0, 181, 1)]
    assert users[0] == 1 and users[36] == 300  # a fifth of a 3-minute run to the peak
    assert max(u for u in users if u) == 300
    assert users[179] is not None and users[179] < 100  # decayed towards a quarter
    assert users[180] is None  # over
    steps = {users_at("step", t, 100, 100) for t in range(100)}
    assert steps == {20, 40, 60, 80, 100}


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("3m", 180), ("90", 90), ("1h", 3600), ("1h30m", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, minimum=5) == seconds


@pytest.mark.parametrize("text", ["", "3x", "2s", "m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|at least 5 seconds"):
        parse_duration(text, minimum=5)


def test_peak_per_minute_is_the_busiest_window() -> None:
    acks = [{"op": "booked", "t": float(t)} for t in [0, 10, 20, 65, 70, 75, 80, 300]]
    acks.append({"op": "cancelled", "t": 71.0})
    assert peak_per_minute(acks) == 5  # 20..80


def test_the_locustfile_imports_no_ray() -> None:
    code = "import sys, loadtests.locustfile; assert 'ray' not in sys.modules, 'ray imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_help_and_bad_usage() -> None:
    run = [sys.executable, "-m", "loadtests.cli"]
    help_text = subprocess.run([*run, "--help"], capture_output=True, text=True).stdout
    for option in ("--stack", "--url", "--spike", "--duration", "--users", "--threshold"):
        assert option in help_text
    bad = subprocess.run([*run, "--url", "http://x", "--key", "k", "--duration", "1s"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "at least 5 s" in bad.stderr


def test_a_launch_through_the_waiting_room(tmp_path: Path) -> None:
    """hexbook-load --room: the tool opens the room on the stack it starts; bookers join,
    wait in the pre-queue until it opens, and hold with their admission; the audit holds."""
    out = tmp_path / "room"
    done = subprocess.run(
        [
            sys.executable, "-m", "loadtests.cli", "--stack", "--spike", "--duration", "40s",
            "--users", "30", "--sites", "200", "--weights", "searcher=1,booker=5,changer=0",
            "--room", "launch", "--room-rate", "600", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = {r["name"]: r for r in read_stats(out / "locust_stats.csv")}
    assert rows["POST /v1/rooms/{id}/visitors"]["requests"] >= 30
    assert rows["GET /v1/rooms/{id}/visitors/{visitor}"]["requests"] > 0  # the pre-queue
    assert rows["admitted by the room"]["requests"] > 0
    assert rows["POST /v1/holds"]["requests"] > 0 and rows["POST /v1/holds"]["failures"] == 0
    assert "opens at" in done.stdout
    figures = next(line for line in done.stdout.splitlines() if line.startswith("room launch:"))
    admitted = int(figures.split(" admitted")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert admitted > 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["audit_ok"] and verdict["bookings"] > 0


def _load(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtests.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_an_unreachable_url_or_a_refused_key_is_one_clear_line(child_stack: LocalStack) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    for url, key, said in (
        (nobody, "hbk_whatever", f"cannot reach {nobody}: ConnectError"),
        (child_stack.url, "hbk_not_a_key", f"the key was refused by {child_stack.url} (401"),
    ):
        done = _load("--url", url, "--key", key, "--duration", "10s", "--no-audit")
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_failures_are_counted_by_reason_in_the_console_and_the_verdict(
    child_stack: LocalStack, tmp_path: Path
) -> None:
    """A key limited to 2 requests a second: most requests fail with 429 rate_limited,
    and the console and verdict.json say so by reason, not just as a count."""
    import httpx

    operator = child_stack.key("operator", "tests")
    made = httpx.post(
        f"{child_stack.url}/v1/keys",
        json={"role": "booking-client", "name": "slow", "rate_per_second": 2},
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert made.status_code == 201, made.text
    out = tmp_path / "limited"
    done = _load(
        "--url", child_stack.url, "--key", made.json()["key"], "--shape", "steady",
        "--duration", "8s", "--users", "20", "--no-audit", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert "THRESHOLD BROKEN: error ratio" in done.stdout
    reasons = done.stdout.split("failures by reason (status and problem code):")[1]
    first = reasons.strip().splitlines()[0].split()
    assert first[1:3] == ["429", "rate_limited"], reasons[:500]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["pass"] is False
    top = verdict["failures"][0]
    assert top["reason"] == "429 rate_limited" and top["count"] == int(first[0].replace(",", ""))
    assert not next(c for c in verdict["thresholds"] if c["name"] == "error ratio")["ok"]


def test_ui_runs_with_locusts_web_ui_and_still_gives_the_verdict(
    child_stack: LocalStack, tmp_path: Path
) -> None:
    import httpx

    out = tmp_path / "ui"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.cli", "--url", child_stack.url,
         "--key", child_stack.keys["booking-client"], "--duration", "6s", "--users", "3",
         "--no-audit", "--ui", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "web UI at" in line:
            break
    found = re.search(r"web UI at (http://127\.0\.0\.1:\d+)", "".join(lines))
    assert found is not None, "".join(lines)
    ui = until(lambda: _get(httpx, found[1]), 30)
    assert ui.status_code == 200 and "locust" in ui.text.lower()
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "hexbook-load: PASS" in rest
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["pass"] and verdict["thresholds_broken"] == [] and verdict["audit_ok"]


def _get(httpx: Any, url: str) -> Any:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def test_stats_without_answers_read_as_zero_not_a_traceback(tmp_path: Path) -> None:
    """Locust writes N/A where no request got an answer (an unreachable gateway)."""
    stats = tmp_path / "locust_stats.csv"
    stats.write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
        "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
        "GET,GET /v1/search,12,12,0,0,0,0,0,1.2,1.2,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
    )
    (row,) = read_stats(stats)
    assert (row["requests"], row["failures"], row["p50"], row["p99"]) == (12, 12, 0.0, 0.0)
    assert check_thresholds([row], Thresholds()) == ["error ratio 100.00% > 1.00%"]
