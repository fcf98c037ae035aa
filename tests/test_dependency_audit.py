"""The dependency audit (.ci/dependency_audit.py) that `make test` runs on the pins: it
fails on a pin a known advisory affects, unless a documented exception that has not
expired covers it. Offline: the advisory snapshot in requirements/."""

from __future__ import annotations

import importlib.util
import sys
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dependency_audit", ROOT / ".ci" / "dependency_audit.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dependency_audit"] = module
    spec.loader.exec_module(module)
    return module


def run(audit: ModuleType, tmp_path: Path, lock: str, exceptions: str = "") -> int:
    (tmp_path / "lock.txt").write_text(lock)
    (tmp_path / "exceptions.toml").write_text(exceptions)
    args = ["check", str(tmp_path / "lock.txt"), "--offline",
            "--exceptions", str(tmp_path / "exceptions.toml")]  # fmt: skip
    return audit.main(args)  # type: ignore[no-any-return]


def test_the_pinned_set_has_no_known_vulnerability(audit: ModuleType) -> None:
    pinned = audit.pins(ROOT / "requirements" / "lock.txt")
    assert "cryptography" in pinned and len(pinned) > 50
    _, advisories = audit.load_snapshot()
    assert audit.offline_findings(pinned, advisories) == []


def test_a_vulnerable_pin_fails_until_a_documented_exception_covers_it(
    audit: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = "# old\nJinja2==2.10\nurllib3==1.24.1  # two known ones\ncryptography==50.0.2\n"
    code = run(audit, tmp_path, lock)
    out = capsys.readouterr().out
    assert code == 1 and "VULNERABLE: jinja2 2.10" in out and "VULNERABLE: urllib3 1.24.1" in out
    assert "cryptography" not in out.split("VULNERABLE", 1)[1]
    # Jinja2 2.10's sandbox escape (CVE-2019-10906), named by an alias.
    assert "CVE-2019-10906" in out
    # An exception for every finding, with a reason and a date to come: it passes.
    _, advisories = audit.load_snapshot()
    found = audit.offline_findings(audit.pins(tmp_path / "lock.txt"), advisories)
    future = date.today() + timedelta(days=30)
    rows = "".join(
        f'[[exception]]\nid = "{f.advisory}"\npackage = "{f.package}"\n'
        f'reason = "not reachable in hexbook"\nexpires = {future.isoformat()}\n'
        for f in found
    )
    code = run(audit, tmp_path, lock, rows)
    out = capsys.readouterr().out
    assert code == 0 and "excepted until" in out and "VULNERABLE" not in out
    # An expired exception fails like the finding; one without a reason is refused.
    past = date.today() - timedelta(days=1)
    code = run(audit, tmp_path, lock, rows.replace(future.isoformat(), past.isoformat()))
    assert code == 1 and "EXPIRED exception" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="lacks reason"):
        run(
            audit,
            tmp_path,
            lock,
            '[[exception]]\nid = "X"\npackage = "jinja2"\nexpires = 2099-01-01\n',
        )


def test_versions_are_matched_by_ranges_and_lists(audit: ModuleType) -> None:
    entry = ["A-1", [], "", ["1.0rc1"], [["0", "1.2", None], ["2.0", None, "2.3"]]]
    assert audit.affects(entry, "1.1") and audit.affects(entry, "1.0rc1")
    assert not audit.affects(entry, "1.2") and not audit.affects(entry, "1.5")
    assert audit.affects(entry, "2.3") and not audit.affects(entry, "2.4")
    assert audit.canonical("Flask_Login") == audit.canonical("flask.login") == "flask-login"
    with pytest.raises(SystemExit, match="not a pin"):
        audit.pins(Path(__file__).with_name("conftest.py"))
