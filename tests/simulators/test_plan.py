"""``hexbook-sim plan``: the counts for a known peak, from measured capacities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.cli import main
from simulators.plan import plan_for_peak
from simulators.scenario import Capacity

K = Capacity(
    shard_ops_per_second=1000,
    gateway_requests_per_second=1000,
    redis_events_per_second=10_000,
    cores_per_node=4,
    utilization=0.5,
)


def test_each_count_carries_its_share_of_the_peak_at_the_utilization() -> None:
    # 60,000 requests/min = 1,000/s: 2 gateways at 50% of 1,000/s each. 6,000 bookings a
    # minute with 1.5 holds each = 250 ops/s: 1 shard (500 at 50%); Redis 1.
    p = plan_for_peak(60_000, 6_000, K, holds_per_booking=1.5)
    assert (p.gateways, p.shards, p.redis_servers) == (2, 1, 1)
    assert p.nodes == 1  # 4 processes on a node of 4 cores
    p = plan_for_peak(600_000, 600_000, K, holds_per_booking=1.0)  # 20,000 ops/s
    assert (p.gateways, p.shards, p.redis_servers) == (20, 40, 4)
    assert p.nodes == 16


@given(st.floats(0, 1e8), st.floats(0, 1e7), st.floats(0, 1e8), st.floats(0, 1e7))
def test_more_load_never_needs_fewer(r1: float, b1: float, r2: float, b2: float) -> None:
    lo = plan_for_peak(min(r1, r2), min(b1, b2), K)
    hi = plan_for_peak(max(r1, r2), max(b1, b2), K)
    for field in ("gateways", "shards", "redis_servers", "nodes"):
        assert getattr(lo, field) <= getattr(hi, field)
    # and every count carries its load at the utilization
    assert hi.gateways * K.gateway_requests_per_second * K.utilization >= hi.requests_per_second
    assert hi.shards * K.shard_ops_per_second * K.utilization >= hi.shard_ops_per_second - 1e-6
    assert hi.shards >= hi.redis_servers  # each server journals a shard at least


def test_the_command_reads_the_bench_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"gateway_requests_per_second": 500.0}))
    args = ["plan", "--requests-per-minute", "300000", "--bookings-per-minute", "750"]
    assert main([*args, "--bench", str(bench)]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out.strip().splitlines()[-1])
    assert plan["gateways"] == 15  # 5,000 requests/s over 500 x 0.7
    assert "measured" in out
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["gateways"] == 8
    # A Redis measured to take little: more servers, a shard for each, and how to run it.
    bench.write_text(json.dumps({"redis_events_per_second": 10.0}))
    assert main([*args, "--bench", str(bench)]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out.strip().splitlines()[-1])
    assert plan["redis_servers"] == 4  # 750 x 2.2 / 60 = 27.5 events/s over 10 x 0.7
    assert plan["shards"] >= 4
    assert "--journal-redis URL2 --journal-redis URL3 --journal-redis URL4" in out


@pytest.mark.parametrize(
    "extra",
    [
        ["--requests-per-minute", "-5", "--bookings-per-minute", "1"],
        ["--requests-per-minute", "5", "--bookings-per-minute", "1", "--utilization", "0"],
        ["--requests-per-minute", "5", "--bookings-per-minute", "1", "--cores-per-node", "0"],
        ["--requests-per-minute", "5", "--bookings-per-minute", "1", "--bench", "/nope.json"],
    ],
)
def test_bad_input_is_exit_2_with_a_reason(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *extra]) == 2
    assert capsys.readouterr().err.startswith("hexbook-sim: ")
