"""Audit the pinned dependencies (requirements/lock.txt) for known vulnerabilities.

pip-audit asks PyPI's per-version JSON API or OSV for each pin; neither answers from
the machines hexbook is built on (only the package index is reachable), so this audit
uses two sources that do:

1. **A snapshot of the PyPA advisory database** (github.com/pypa/advisory-database, the
   data PyPI and OSV serve for Python packages), kept compact in
   ``requirements/advisories.json.gz``: every advisory, its affected versions and ranges.
   Checked offline, for every pin. ``make advisories`` remakes it from a clone of the
   database (``--from DIR``); the snapshot's date is printed with every audit.
2. **PyPI's project JSON** (``/pypi/<name>/json``, reachable where packages install):
   it lists the known vulnerabilities of the *latest* release, so for every pin that is
   the latest release this is today's answer. A pin older than the latest is said so
   (its advisories since the snapshot are unknown here). ``--offline`` skips this.

A finding fails the audit (exit 1) unless ``requirements/audit-exceptions.toml`` has an
exception for it: the advisory id, the package, why it does not apply or cannot be
fixed yet, and a date it expires on (an expired exception fails like the finding).

    python .ci/dependency_audit.py check requirements/lock.txt
    python .ci/dependency_audit.py build --from ~/src/advisory-database
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import re
import sys
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "requirements" / "advisories.json.gz"
EXCEPTIONS = ROOT / "requirements" / "audit-exceptions.toml"
PYPI = "https://pypi.org/pypi/{name}/json"


def canonical(name: str) -> str:
    """PEP 503: ``Flask_Login`` and ``flask.login`` are ``flask-login``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """``name==version`` lines of a lock file, by canonical name."""
    out: dict[str, str] = {}
    for n, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise SystemExit(f"{lock}:{n}: not a pin (name==version): {line!r}")
        out[canonical(name.split("[", 1)[0].strip())] = version.split(";", 1)[0].strip()
    return out


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory: str
    aliases: tuple[str, ...]
    summary: str
    fixed: str
    source: str

    def names(self) -> set[str]:
        return {self.advisory, *self.aliases}


# --- the snapshot ----------------------------------------------------------------------


def build(database: Path, out: Path = SNAPSHOT) -> int:
    """Compact every PyPI advisory of a clone of the PyPA advisory database into ``out``."""
    import subprocess

    import yaml

    advisories: dict[str, list[list[Any]]] = {}
    count = 0
    for path in sorted((database / "vulns").rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("withdrawn"):
            continue
        for affected in doc.get("affected", []):
            pkg = affected.get("package", {})
            if pkg.get("ecosystem") != "PyPI":
                continue
            ranges = []
            for r in affected.get("ranges", []):
                if r.get("type") != "ECOSYSTEM":
                    continue
                intro = fixed = last = None
                for ev in r.get("events", []):
                    if "introduced" in ev:
                        if intro is not None:
                            ranges.append([intro, fixed, last])
                            fixed = last = None
                        intro = str(ev["introduced"])
                    fixed = str(ev["fixed"]) if "fixed" in ev else fixed
                    last = str(ev["last_affected"]) if "last_affected" in ev else last
                if intro is not None:
                    ranges.append([intro, fixed, last])
            summary = (doc.get("summary") or doc.get("details") or "").strip().split("\n")[0]
            advisories.setdefault(canonical(pkg["name"]), []).append(
                [doc["id"], doc.get("aliases", []), summary[:160],
                 [str(v) for v in affected.get("versions", [])], ranges]
            )  # fmt: skip
            count += 1
    head = subprocess.run(
        ["git", "-C", str(database), "log", "-1", "--format=%H %cs"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    meta = {"source": "https://github.com/pypa/advisory-database",
            "commit": head[0] if head else "", "date": head[1] if head else ""}  # fmt: skip
    payload = json.dumps({"meta": meta, "advisories": advisories}, separators=(",", ":"))
    out.write_bytes(gzip.compress(payload.encode(), mtime=0))
    return count


def load_snapshot(path: Path = SNAPSHOT) -> tuple[dict[str, Any], dict[str, list[list[Any]]]]:
    data = json.loads(gzip.decompress(path.read_bytes()))
    return data["meta"], data["advisories"]


def _v(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def affects(entry: list[Any], version: str) -> bool:
    """Whether an advisory of the snapshot affects ``version``."""
    _, _, _, versions, ranges = entry
    if version in versions:
        return True
    v = _v(version)
    if v is None:
        return False
    for intro, fixed, last in ranges:
        lo = _v(intro) if intro not in ("0", None) else None
        if lo is not None and v < lo:
            continue
        if fixed is not None and (f := _v(fixed)) is not None and v >= f:
            continue
        if last is not None and (la := _v(last)) is not None and v > la:
            continue
        return True
    return False


def offline_findings(
    pinned: dict[str, str], advisories: dict[str, list[list[Any]]]
) -> list[Finding]:
    out = []
    for name, version in sorted(pinned.items()):
        for entry in advisories.get(name, []):
            if affects(entry, version):
                fixed = ", ".join(r[1] for r in entry[4] if r[1]) or "no fix listed"
                out.append(Finding(name, version, entry[0], tuple(entry[1]), entry[2], fixed,
                                   "advisory snapshot"))  # fmt: skip
    return out


# --- PyPI, for the latest releases -------------------------------------------------------


def _project(name: str, timeout: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(PYPI.format(name=name), timeout=timeout) as r:
            return json.load(r)  # type: ignore[no-any-return]
    except (urllib.error.URLError, TimeoutError, OSError, ValueError):
        return None


def online_findings(
    pinned: dict[str, str], timeout: float = 15.0
) -> tuple[list[Finding], list[str], list[str]]:
    """Findings for pins that are their project's latest release; the pins that are not
    (name, pin, latest); the projects PyPI did not answer for."""
    findings: list[Finding] = []
    older: list[str] = []
    unreachable: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = dict(zip(pinned, pool.map(lambda n: _project(n, timeout), pinned), strict=True))
    for name, version in sorted(pinned.items()):
        doc = answers[name]
        if doc is None:
            unreachable.append(name)
            continue
        latest = str(doc.get("info", {}).get("version", ""))
        if _v(latest) != _v(version):
            older.append(f"{name} {version} (latest {latest})")
            continue
        for vuln in doc.get("vulnerabilities") or []:
            findings.append(Finding(
                name, version, str(vuln.get("id")), tuple(vuln.get("aliases") or ()),
                str(vuln.get("summary") or vuln.get("details") or "")[:160],
                ", ".join(vuln.get("fixed_in") or []) or "no fix listed", "PyPI",
            ))  # fmt: skip
    return findings, older, unreachable


# --- exceptions and the verdict ----------------------------------------------------------


def load_exceptions(path: Path = EXCEPTIONS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = tomllib.loads(path.read_text()).get("exception", [])
    for i, row in enumerate(rows, 1):
        missing = [k for k in ("id", "package", "reason", "expires") if not row.get(k)]
        if missing:
            raise SystemExit(f"{path}: exception {i} lacks {', '.join(missing)}")
        if not isinstance(row["expires"], date):
            raise SystemExit(f"{path}: exception {i}: expires must be a date (2027-01-31)")
    return rows  # type: ignore[no-any-return]


def verdict(
    findings: list[Finding], exceptions: list[dict[str, Any]], today: date
) -> tuple[list[Finding], list[tuple[Finding, dict[str, Any]]], list[str]]:
    """(failing findings, excepted findings with their exception, expired exceptions)."""
    failing, excepted, expired = [], [], []
    seen: set[tuple[str, str]] = set()
    for f in findings:
        key = (f.package, f.advisory)
        if key in seen:
            continue
        seen.add(key)
        match = next(
            (
                e
                for e in exceptions
                if canonical(e["package"]) == f.package and e["id"] in f.names()
            ),
            None,
        )
        if match is None:
            failing.append(f)
        elif match["expires"] < today:
            expired.append(f"{match['id']} ({f.package}) expired on {match['expires']}")
            failing.append(f)
        else:
            excepted.append((f, match))
    return failing, excepted, expired


def check(lock: Path, offline: bool, snapshot: Path, exceptions_path: Path) -> int:
    pinned = pins(lock)
    meta, advisories = load_snapshot(snapshot)
    findings = offline_findings(pinned, advisories)
    print(f"dependency audit: {len(pinned)} pins in {lock.name}")
    print(f"  advisory snapshot: {sum(map(len, advisories.values())):,} advisories of "
          f"{len(advisories):,} packages, {meta['source']} as of {meta['date']}")  # fmt: skip
    if not offline:
        more, older, unreachable = online_findings(pinned)
        findings += more
        current = len(pinned) - len(older) - len(unreachable)
        print(f"  PyPI: {current} pins are the latest release, checked against today's "
              f"advisories; {len(older)} older pins checked by the snapshot only")  # fmt: skip
        for line in older:
            print(f"    older: {line}")
        if unreachable:
            print(f"  PyPI did not answer for: {', '.join(unreachable)}")
    failing, excepted, expired = verdict(findings, load_exceptions(exceptions_path),
                                         datetime.now(UTC).date())  # fmt: skip
    for f, e in excepted:
        print(f"  excepted until {e['expires']}: {f.package} {f.version} {f.advisory}: "
              f"{e['reason']}")  # fmt: skip
    for line in expired:
        print(f"  EXPIRED exception: {line}")
    for f in failing:
        aka = f" ({', '.join(f.aliases)})" if f.aliases else ""
        print(f"  VULNERABLE: {f.package} {f.version}: {f.advisory}{aka}, fixed in {f.fixed} "
              f"[{f.source}]: {f.summary}")  # fmt: skip
    if failing:
        print(f"dependency audit FAILED: {len(failing)} known vulnerabilit"
              f"{'y' if len(failing) == 1 else 'ies'}; upgrade the pin (make lock), or add "
              f"a documented exception to {exceptions_path.name}")  # fmt: skip
        return 1
    print("dependency audit passed: no known vulnerability without a documented exception")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dependency_audit", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="audit a lock file (exit 1 on a known vulnerability)")
    c.add_argument("lock", type=Path, nargs="?", default=ROOT / "requirements" / "lock.txt")
    c.add_argument("--offline", action="store_true", help="the snapshot only, no PyPI")
    c.add_argument("--snapshot", type=Path, default=SNAPSHOT)
    c.add_argument("--exceptions", type=Path, default=EXCEPTIONS)
    b = sub.add_parser("build", help="remake the snapshot from a clone of the database")
    b.add_argument("--from", dest="database", type=Path, required=True)
    b.add_argument("--out", type=Path, default=SNAPSHOT)
    args = parser.parse_args(argv)
    if args.command == "build":
        n = build(args.database, args.out)
        print(f"{n:,} advisories written to {args.out} ({args.out.stat().st_size:,} bytes)")
        return 0
    return check(args.lock, args.offline, args.snapshot, args.exceptions)


if __name__ == "__main__":
    sys.exit(main())
