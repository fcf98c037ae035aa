"""hexbook-sim's reports: the files are written, the plots are real PNGs, the CSVs agree
with the model, and the command line explains itself and refuses bad input clearly."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from simulators.cli import main
from tests.simulators.test_sim import TOWN

PLOTS = (
    "bookings_per_minute.png",
    "time_to_book.png",
    "share_booked.png",
    "unserved_map.png",
    "travel_distance.png",
    "fill_rate.png",
    "load.png",
)


def valid_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        # Not a blank canvas: a plot has many colours.
        assert len(im.getcolors(maxcolors=1_000_000) or []) > 20, path
        return im.size


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN)
    out = tmp_path / "report"
    assert main(["run", str(scenario), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "booked:" in printed and f"report: {out / 'index.html'}" in printed
    # the town is small: one of each, on two 2-core nodes (Redis takes a core too)
    assert "needs: 1 shard, 1 gateway process, 1 Redis server, 2 nodes (peak" in printed
    page_text = (out / "index.html").read_text()
    assert "run at 70% of capacity (30% headroom)" in page_text
    for name in PLOTS:
        w, h = valid_png(out / name)
        assert w > 400 and h > 300
    page = (out / "index.html").read_text()
    for name in PLOTS:
        assert f'src="{name}"' in page
    assert "What to provision" in page and "shards" in page
    summary = {r["metric"]: r["value"] for r in rows(out / "summary.csv")}
    sites = rows(out / "sites.csv")
    assert len(sites) == 6
    assert sum(int(r["booked"]) for r in sites) == int(summary["places booked"])
    assert all(int(r["booked"]) <= int(r["places"]) for r in sites)
    minutes = rows(out / "minutes.csv")
    assert sum(int(r["bookings"]) for r in minutes) == int(summary["booked"])
    assert sum(int(r["arrivals"]) for r in minutes) == int(summary["arrivals"])
    cells = rows(out / "cells.csv")
    assert sum(int(r["unserved"]) for r in cells) == int(summary["gave up"]) + int(
        summary["still trying at the end"]
    )
    assert int(summary["plan shards"]) >= 1
    # The interactive map: self-contained, and every cell's numbers are in it.
    page = (out / "map.html").read_text()
    assert re.search(r"(https?:)?//[a-z]", page) is None  # nothing fetched from anywhere
    assert "<link" not in page and " src=" not in page
    payload = re.search(r'<script id="cells" type="application/json">(.*?)</script>', page, re.S)
    assert payload is not None
    shown = {c["cell"]: c for c in json.loads(payload[1])}
    assert set(shown) == {r["cell"] for r in cells}
    for r in cells:
        c = shown[r["cell"]]
        for k in ("population", "arrivals", "booked", "unserved", "gave_up", "waiting"):
            assert c[k] == int(r[k]), (r["cell"], k)
        assert len(c["nearest"]) == 3 and c["nearest"][0][1] <= c["nearest"][1][1]
    assert page.count("<polygon") == len(cells)


def test_compare_puts_two_scenarios_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text(TOWN)
    b.write_text(
        TOWN.replace('name = "test town"', 'name = "two more sites"').replace(
            "count = 6", "count = 8"
        )
    )
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "sites" in table and "booked" in table
    for name in ("bookings_per_minute.png", "share_booked.png", "time_to_book.png"):
        valid_png(out / name)
    page = (out / "index.html").read_text()
    assert "test town" in page and "two more sites" in page
    assert (out / "a" / "index.html").exists() and (out / "b" / "index.html").exists()
    sites_row = next(line for line in table.splitlines() if line.startswith("sites "))
    assert sites_row.split()[1:] == ["6", "8", "-2", "-25.0%"]  # A, B, A - B, (A - B) / B
    # Every difference is A minus B, and the known ones are what the scenarios say.
    figures = {r["figure"]: r for r in rows(out / "comparison.csv")}
    for r in figures.values():
        if r["a"] and r["b"] and r["a_minus_b"]:
            assert float(r["a_minus_b"]) == pytest.approx(float(r["a"]) - float(r["b"]))
            vb = float(r["b"])
            rel = (float(r["a"]) - vb) / abs(vb) if vb else None
            assert (float(r["relative_to_b"]) if r["relative_to_b"] else None) == (
                pytest.approx(rel) if rel is not None else None
            )
    places = [sum(int(x["places"]) for x in rows(out / k / "sites.csv")) for k in "ab"]
    assert float(figures["places offered"]["a_minus_b"]) == places[0] - places[1] < 0
    booked = [int(figures["booked"][k]) for k in "ab"]
    assert float(figures["booked"]["a_minus_b"]) == booked[0] - booked[1]
    # The map of where B served more or fewer: its cells add up to B's bookings minus A's.
    valid_png(out / "served_difference_map.png")
    from simulators.compare import served_by_cell
    from simulators.scenario import load_scenario
    from simulators.sim import simulate

    ra, rb = simulate(load_scenario(a)), simulate(load_scenario(b))
    _, served = served_by_cell(ra, rb)
    assert served.sum() == booked[1] - booked[0]


def test_bench_figures_set_the_capacity(tmp_path: Path) -> None:
    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"shard_ops_per_second": 0.05, "gateway_requests_per_second": 0.5}))
    out = tmp_path / "r"
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--bench", str(bench)]) == 0
    summary = {r["metric"]: r["value"] for r in rows(out / "summary.csv")}
    # At 0.05 ops/s a shard, the town needs many shards, or more than any count (0).
    assert int(summary["plan shards"]) != 1
    assert int(summary["plan gateways"]) > 1
    bench.write_text("{}")
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--bench", str(bench)]) == 2
    # A Redis measured to take little: the plan counts more than one, and a shard each.
    bench.write_text(json.dumps({"redis_events_per_second": 0.01}))
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--bench", str(bench)]) == 0
    summary = {r["metric"]: r["value"] for r in rows(out / "summary.csv")}
    assert int(summary["plan redis_servers"]) > 1
    assert int(summary["plan shards"]) >= int(summary["plan redis_servers"])
    assert int(summary["plan nodes"]) >= int(summary["plan redis_servers"]) // 2


def test_bad_input_is_a_clear_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["run", str(missing), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[demand]\nmax_tries = 0')
    assert main(["run", str(bad), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "demand.max_tries" in err


def test_help_explains_every_command() -> None:
    for args in ([], ["run"], ["compare"], ["live"], ["sweep"]):
        done = subprocess.run(
            [sys.executable, "-m", "simulators.cli", *args, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "usage: hexbook-sim" in done.stdout
    live = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "live", "--help"], capture_output=True, text=True
    ).stdout
    for option in ("--url", "--stack", "--key", "--speed", "--concurrency", "--out", "--seed"):
        assert option in live


def test_room_puts_the_launch_with_and_without_its_waiting_room_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN)
    out = tmp_path / "room"
    assert main(["room", str(scenario), "--out", str(out), "--quiet", "--per-minute", "30"]) == 0
    table = capsys.readouterr().out
    told = next(line for line in table.splitlines() if line.startswith("told sold out"))
    no_room, with_room = (int(v.replace(",", "")) for v in told.split()[-4:-2])
    assert no_room == 0 and with_room > 0
    for name in ("booked_by_arrival.png", "time_to_book.png"):
        valid_png(out / name)
    page = (out / "index.html").read_text()
    assert "no waiting room" in page and "waiting room at 30/min" in page
    assert main(["room", str(scenario), "--out", str(out), "--quiet", "--per-minute", "0"]) == 2


def test_seeds_give_each_figure_its_spread_and_it_narrows_with_more_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulators.scenario import parse_scenario
    from simulators.sweep import KEY_FIGURES, figures_of, run_seeds, spread

    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN)
    out = tmp_path / "seeds"
    assert main(["run", str(scenario), "--seeds", "5", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "5 seeds" in printed and "95% interval" in printed
    per_seed = rows(out / "seeds.csv")
    assert [int(r["seed"]) for r in per_seed] == [11, 12, 13, 14, 15]  # TOWN's seed is 11
    table = {r["figure"]: r for r in rows(out / "spread.csv")}
    assert list(table) == list(KEY_FIGURES)
    k = "median minutes from arrival to booking"
    seen = [float(r[k]) for r in per_seed]
    assert float(table[k]["mean"]) == pytest.approx(sum(seen) / 5)
    assert float(table[k]["low"]) == min(seen) < max(seen) == float(table[k]["high"])
    for name in ("spread_bookings_per_minute.png", "spread_share_booked.png", "index.html"):
        assert (out / name).exists()
    valid_png(out / "spread_bookings_per_minute.png")
    # The interval of the mean narrows as seeds are added (same city, more draws).
    s = parse_scenario(TOWN)
    few = {x.figure: x for x in spread([figures_of(r) for r in run_seeds(s, 4)])}
    many = {x.figure: x for x in spread([figures_of(r) for r in run_seeds(s, 16)])}
    varying = [k for k in KEY_FIGURES if few[k].sd > 0 and many[k].sd > 0]
    assert len(varying) >= 5
    narrower = [k for k in varying if many[k].ci95 < few[k].ci95]
    assert len(narrower) >= 0.8 * len(varying), {k: (few[k].ci95, many[k].ci95) for k in varying}
    assert many[k].ci95 < few[k].ci95


def test_a_sweep_gives_the_key_figures_against_any_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulators.sweep import KEY_FIGURES

    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN)
    out = tmp_path / "sweep"
    args = ["sweep", str(scenario), "--set", "sites=3,6,12", "--seeds", "2", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "sites.count" in printed  # 'sites' is short for sites.count
    runs = rows(out / "sweep.csv")
    assert len(runs) == 3 * 2 and list(runs[0]) == ["sites.count", "seed", *KEY_FIGURES]
    mean = {
        v: sum(float(r["booked"]) for r in runs if r["sites.count"] == v) / 2
        for v in ("3", "6", "12")
    }
    assert mean["3"] < mean["6"] < mean["12"]  # more sites, more booked
    valid_png(out / "sweep.png")
    assert "sites.count" in (out / "index.html").read_text()
    # A bare field name found in one table alone; a wrong one is a clear exit 2.
    assert main(["sweep", str(scenario), "--set", "eligible_share=0.01,0.02", "--out",
                 str(tmp_path / "e"), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    for bad, said in (
        ("sites.colour=1,2", "sites has no field 'colour'"),
        ("sites.count=5", "at least two values"),
        ("demand=1,2", "a table; name one of its fields"),
        ("sites.count=0,5", "sites.count"),
    ):
        assert main(["sweep", str(scenario), "--set", bad, "--out", str(tmp_path / "x")]) == 2
        assert said in capsys.readouterr().err, bad


def test_the_map_shows_a_cells_numbers_on_hover_and_focus_in_a_real_browser(
    tmp_path: Path,
) -> None:
    from tests.browser import page

    scenario = tmp_path / "town.toml"
    scenario.write_text(TOWN)
    out = tmp_path / "report"
    assert main(["run", str(scenario), "--out", str(out), "--quiet"]) == 0
    cells = {r["cell"]: r for r in rows(out / "cells.csv")}
    with page() as p:
        asked: list[str] = []
        p.on("request", lambda r: asked.append(r.url))
        p.goto((out / "map.html").as_uri())
        assert p.locator("#panel").inner_text() == "No cell chosen."
        busiest = max(cells.values(), key=lambda r: int(r["arrivals"]))
        i = list(cells).index(busiest["cell"])
        p.locator(f'polygon[data-i="{i}"]').hover()
        text = p.locator("#panel").inner_text()
        assert busiest["cell"] in text
        assert f"arrivals\t{busiest['arrivals']}" in text and "nearest sites" in text
        p.keyboard.press("Tab")  # the keyboard reaches the cells too
        assert "cell\t" in p.locator("#panel").inner_text()
        assert [u for u in asked if not u.startswith("file://")] == []


def test_every_scenario_file_the_help_and_docs_name_exists() -> None:
    root = Path(__file__).resolve().parents[2]
    said = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "--help"], capture_output=True, text=True
    ).stdout
    texts = [
        said,
        *(p.read_text() for p in (root / "docs").glob("*.md")),
        (root / "README.md").read_text(),
    ]
    named = {m for t in texts for m in re.findall(r"simulators/scenarios/[\w.-]+\.(?:toml|csv)", t)}
    assert "simulators/scenarios/chicago-mass-sites.toml" in named
    assert [n for n in sorted(named) if not (root / n).exists()] == []
    assert re.findall(r"hexbook-sim \w+ [\w-]+\.toml", said) == []  # always the full path
