"""Dependencies point inward: engine/ uses no Ray, no Redis, no HTTP and no wall clock."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_imports_no_infrastructure() -> None:
    code = (
        "import sys, engine\n"
        "bad = [m for m in ('ray', 'redis', 'fastapi', 'starlette', 'uvicorn', 'httpx', "
        "'actors', 'gateway') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert out == "", f"engine imported {out}"


def test_engine_reads_no_clock() -> None:
    clock = re.compile(
        r"time\.time\(|time\.monotonic\(|datetime\.now\(|datetime\.utcnow\(|"
        r"date\.today\(|perf_counter\("
    )
    offenders = [
        f"{p.name}:{n}"
        for p in (ROOT / "engine").glob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if clock.search(line)
    ]
    assert offenders == []
