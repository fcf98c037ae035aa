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


def test_the_tools_share_one_toolkit_that_depends_on_nothing_of_hexbook() -> None:
    """docs/adr/0017: simulators/toolkit.py imports nothing of hexbook, the server never
    imports a tool, no module imports a command line's privates, and there is one stack
    starter, one duration parser and one progress drawer."""
    code = (
        "import sys, importlib\n"
        "def loaded(mod):\n"
        "    before = set(sys.modules); importlib.import_module(mod)\n"
        "    return sorted(m for m in set(sys.modules) - before\n"
        "                  if m.split('.')[0] in ('engine', 'actors', 'gateway', 'simulators', "
        "'loadtests'))\n"
        "print(loaded('simulators.toolkit'))\n"
        "print([m for m in loaded('gateway.app') if m.startswith(('simulators', 'loadtests'))])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()
    assert out == ["['simulators', 'simulators.toolkit']", "[]"]
    sources = {
        p.relative_to(ROOT).as_posix(): p.read_text()
        for d in ("engine", "actors", "gateway", "simulators", "loadtests")
        for p in (ROOT / d).rglob("*.py")
    }
    circles = [f for f, text in sources.items() if re.search(r"from \w+\.cli import", text)]
    assert circles == []
    one_of_each = (
        r"def (_?start_stack|_?parse_duration|_?duration|_progress)\b",
        r"\"gateway\.cli\", \"up\"",  # a child process of `hexbook up`
    )
    for pattern in one_of_each:
        found = sorted(f for f, text in sources.items() if re.search(pattern, text))
        assert found == ["simulators/toolkit.py"], (pattern, found)
