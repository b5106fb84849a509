"""deploy/monitoring: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``); every alert is tested firing and staying quiet; the dashboard's queries
are valid PromQL; the README explains every alert. (That every metric the rules and the dashboard
use is really exported is checked against a running CA and agent in
tests/integration/test_monitoring_metrics.py.)

promtool comes with the Debian package ``prometheus`` (scripts/system-deps installs it). Without it
these tests are skipped on a workstation and fail in CI (``CI`` set)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "s2s-alerts.yml"
RULE_TESTS = MONITORING / "s2s-alerts.test.yml"
DASHBOARD = MONITORING / "s2s-dashboard.json"
README = MONITORING / "README.md"


def find_promtool(environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """promtool's path; None (skip) only outside CI; in CI a missing promtool is a failure."""
    path = shutil.which("promtool")
    if path is None and environ.get("CI"):
        pytest.fail(
            "promtool is missing in CI: scripts/system-deps installs the Debian package prometheus"
        )
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    path = find_promtool()
    if path is None:
        pytest.skip("promtool not installed (apt-get install prometheus); CI runs these tests")
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", ())]


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_fails_a_rule_test_that_expects_the_wrong_alert(
    promtool: str, tmp_path: Path
) -> None:
    """The twin: promtool really compares (a quiet alert expected to fire fails the run)."""
    shutil.copy(RULES, tmp_path / RULES.name)
    wrong = {
        "rule_files": [RULES.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": 's2s_ca_ready{instance="ca-0"}', "values": "1x10"}],
                "alert_rule_test": [
                    {"eval_time": "6m", "alertname": "S2sCaNotReady",
                     "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "ca-0"}}]}
                ],
            }
        ],
    }  # fmt: skip
    (tmp_path / "wrong.test.yml").write_text(yaml.safe_dump(wrong))
    result = subprocess.run(
        [promtool, "test", "rules", "wrong.test.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "S2sCaNotReady" in result.stdout + result.stderr


def test_promtool_check_refuses_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    broken = {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "rate(s2s_ca_ready[5m]"}]}]}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [promtool, "check", "rules", "broken.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each dashboard query, with Grafana's variables filled in, checked as a recording rule."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$job", ".+") for e in dashboard_queries()]
    rules = [{"record": f"s2s:dashboard:{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]})
    )
    result = subprocess.run(
        [promtool, "check", "rules", "dashboard.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def series_labels(selector: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', selector))


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert fires in some test, and some test has a series that must not raise it: an empty
    expectation, or an input series that differs from every expected alert in a label they share."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        inputs = [series_labels(s["series"]) for s in case["input_series"]]
        for check in case["alert_rule_test"]:
            name, expected = check["alertname"], check.get("exp_alerts") or []
            if expected:
                fires.add(name)
            raised = [a["exp_labels"] for a in expected]

            def differs(labels: dict[str, str], alert: dict[str, str]) -> bool:
                return any(alert[k] != v for k, v in labels.items() if k in alert)

            if not expected or any(all(differs(i, a) for a in raised) for i in inputs):
                quiet.add(name)
    names = set(alerts())
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["description"]) > 40, name


def test_readme_explains_every_alert_and_file() -> None:
    text = README.read_text()
    for name in alerts():
        assert f"`{name}`" in text, f"{name} is not explained in {README.name}"
    for path in (RULES, RULE_TESTS, DASHBOARD):
        assert path.name in text


def test_dashboard_is_grafana_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"]
    assert doc["title"]
    assert any(v["type"] == "datasource" for v in doc["templating"]["list"])
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["description"], p["title"]
            assert p["targets"], p["title"]
            assert all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]


def test_missing_promtool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_promtool({}) is None
    with pytest.raises(pytest.fail.Exception, match="promtool is missing in CI"):
        find_promtool({"CI": "true"})
