"""Make the images docs/simulators.md shows (``make docs-images``): a run of the ZIP-code
scenario (its maps, and the interactive map in Chromium with a cell pointed at), a
spread over seeds and a sweep of the small town, and a what-if's difference map."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.cli import main  # noqa: E402
from tests.browser import page  # noqa: E402

IMG = ROOT / "docs" / "img"
SCENARIOS = ROOT / "simulators" / "scenarios"


def sim(*args: str) -> None:
    if main([*args, "--quiet"]) != 0:
        raise SystemExit(f"hexbook-sim {' '.join(args)} failed")


def shoot(html: Path, png: Path, point_at: str | None = None, width: int = 1200) -> None:
    with page() as p:
        p.set_viewport_size({"width": width, "height": 860})
        p.goto(html.as_uri())
        if point_at is not None:
            p.locator(point_at).hover()
        p.screenshot(path=str(png))


def run() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sim("run", str(SCENARIOS / "chicago-zips.toml"), "--out", str(work / "zips"))
        shutil.copy(work / "zips" / "unserved_map.png", IMG / "sim-unserved-map.png")
        cells = (work / "zips" / "cells.csv").read_text().splitlines()[1:]
        busiest = max(range(len(cells)), key=lambda i: int(cells[i].split(",")[5]))
        shoot(work / "zips" / "map.html", IMG / "sim-map-html.png", f'polygon[data-i="{busiest}"]')
        small = str(SCENARIOS / "small.toml")
        sim("run", small, "--seeds", "20", "--out", str(work / "seeds"))
        shutil.copy(work / "seeds" / "spread_bookings_per_minute.png", IMG / "sim-seeds-band.png")
        shoot(work / "seeds" / "spread.html", IMG / "sim-seeds-table.png", width=1000)
        sim("sweep", small, "--set", "sites=6,9,12,15,18", "--seeds", "5", "--out",
            str(work / "sweep"))  # fmt: skip
        shutil.copy(work / "sweep" / "sweep.png", IMG / "sim-sweep.png")
        sim("compare", str(SCENARIOS / "chicago.toml"), str(SCENARIOS / "chicago-mass-sites.toml"),
            "--out", str(work / "what-if"))  # fmt: skip
        shutil.copy(work / "what-if" / "served_difference_map.png", IMG / "sim-what-if-map.png")
    for f in sorted(IMG.glob("sim-*.png")):
        print(f"{f.relative_to(ROOT)}: {f.stat().st_size:,} bytes")


if __name__ == "__main__":
    run()
