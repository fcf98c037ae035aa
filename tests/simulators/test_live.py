"""Live mode against a real stack (``hexbook up`` in a child process: local Ray, its own
redis-server): the model's residents replayed over HTTP book about what the model
predicted, and a run on a gateway of someone else's takes away what it made."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import httpx
import pytest

from simulators.cli import main
from simulators.toolkit import LocalStack
from tests.simulators.test_sim import TOWN

pytestmark = pytest.mark.integration


def test_live_run_matches_the_model_and_cleans_up(
    child_stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN.replace("hours = 3", "hours = 1"))
    out = tmp_path / "live"
    operator = child_stack.key("operator", "tests")
    code = main(
        ["live", str(scenario), "--url", child_stack.url, "--key", operator, "--speed", "60",
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert "longer than the compressed hold time" not in printed.err
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
    # What the run made is gone: no slot of its sites left, its bookings cancelled, its
    # key revoked (it booked, so there was something to take away).
    service = re.search(r"as service (\S+)", printed.out)
    assert service is not None, printed.out
    tag = service[1].rsplit(".", 1)[1]
    took = re.search(r"took away what the run made: ([\d,]+) bookings cancelled", printed.out)
    assert took is not None and int(took[1].replace(",", "")) == round(
        float(rows["bookings"]["live"])
    )
    auth = {"Authorization": f"Bearer {operator}"}
    with httpx.Client(base_url=child_stack.url, headers=auth, timeout=30) as gw:
        for s in sites:
            grid = gw.get(
                f"/v1/providers/{tag}-{s['provider_id']}/slots", params={"service": service[1]}
            )
            assert grid.status_code == 200, grid.text
            assert [x for x in grid.json()["slots"] if x["capacity"]] == []
        keys = [k for k in gw.get("/v1/keys").json() if k["name"] == f"hexbook-sim {tag}"]
        assert len(keys) == 1 and keys[0]["revoked_at"] is not None
