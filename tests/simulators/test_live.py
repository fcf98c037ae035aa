"""Live mode against a real stack (hexbook up: local Ray, its own redis-server): the
model's residents replayed over HTTP book about what the model predicted."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from simulators.cli import main
from tests.simulators.test_sim import TOWN

pytestmark = pytest.mark.integration


def test_live_run_matches_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN.replace("hours = 3", "hours = 1"))
    out = tmp_path / "live"
    code = main(["live", str(scenario), "--stack", "--speed", "60", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    with open(out / "model_vs_live.csv", newline="") as f:
        rows = {r["figure"]: r for r in csv.DictReader(f)}
    assert float(rows["bookings"]["model"]) > 30
    for figure in ("bookings", "fill rate"):
        assert abs(float(rows[figure]["difference"])) <= 0.10, rows[figure]
    page = (out / "index.html").read_text()
    assert "0 errors" in page
    assert (out / "model" / "index.html").exists()
    # Every live booking is at a provisioned site and within its places.
    with open(out / "sites.csv", newline="") as f:
        sites = list(csv.DictReader(f))
    assert sum(int(s["booked_live"]) for s in sites) == round(float(rows["bookings"]["live"]))
    assert all(int(s["booked_live"]) <= int(s["places"]) for s in sites)
