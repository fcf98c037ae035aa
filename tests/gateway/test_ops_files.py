"""The Grafana dashboard and the Prometheus alert rules of docs/ops/ are well formed and
name only metrics that a real gateway serves at /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
_NAME = re.compile(r"\bhexbook_[a-z_]+\b")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _served(base: str) -> set[str]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    families = set(re.findall(r"^# (?:HELP|TYPE) (hexbook_[a-z_]+)", text, re.M))
    samples = set(re.findall(r"^(hexbook_[a-z_]+)", text, re.M))
    return families | samples


def _known(name: str, served: set[str]) -> bool:
    return name in served or any(
        name.endswith(s) and name.removesuffix(s) in served for s in _SUFFIXES
    )


def _balanced(expr: str) -> bool:
    depth = 0
    for ch in expr:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_the_alert_rules_are_rules_on_served_metrics(base: str) -> None:
    served = _served(base)
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    seen = 0
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            seen += 1
            assert re.fullmatch(r"Hexbook[A-Za-z]+", rule["alert"]), rule
            assert rule["labels"]["severity"] in ("page", "warn"), rule
            assert rule["annotations"]["summary"], rule
            assert _balanced(rule["expr"]), rule["expr"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
            names = _NAME.findall(rule["expr"])
            unknown = [n for n in names if not _known(n, served)]
            assert unknown == [], (rule["alert"], unknown)
    assert seen >= 8


def test_the_grafana_dashboard_is_a_dashboard_of_served_metrics(base: str) -> None:
    served = _served(base)
    board = json.loads((OPS / "grafana-dashboard.json").read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    assert board["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for p in board["panels"]:
        assert p["type"] in ("timeseries", "stat", "table", "gauge"), p["title"]
        assert (
            set(p["gridPos"]) == {"x", "y", "w", "h"}
            and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        )
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert _balanced(t["expr"]), t["expr"]
            unknown = [n for n in _NAME.findall(t["expr"]) if not _known(n, served)]
            assert unknown == [], (p["title"], unknown)
