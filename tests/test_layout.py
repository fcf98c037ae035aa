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


def test_the_installed_packages_are_the_locked_ones() -> None:
    """make install takes requirements/lock.txt as constraints: what CI tests is what the
    lock says (a major upgrade never lands unnoticed)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = [
        line.split("==")
        for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    assert len(pinned) > 50
    wrong = []
    for name, wanted in pinned:
        try:
            found = version(name)
        except PackageNotFoundError:
            found = "missing"
        if found != wanted:
            wrong.append(f"{name}: {found}, locked {wanted}")
    assert wrong == [], "run `make install` (or `make lock` after changing pyproject.toml)"


def test_tool_and_test_packages_are_extras_not_dependencies() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    for tool_only in ("locust", "matplotlib", "tqdm", "fhir.resources", "psutil", "pytest"):
        assert tool_only not in core, tool_only
    extras = project["optional-dependencies"]
    assert any(d.startswith("locust") for d in extras["load"])
    assert any(d.startswith("matplotlib") for d in extras["sim"])
