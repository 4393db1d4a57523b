"""monitoring/prometheus-rules.yml: valid for promtool, unit-tested by promtool (monitoring/tests/*.yml),
every alert covered firing and not firing, and every metric it reads exported by the daemon."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from observability.promql import PROMETHEUS_SERIES, exported_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus-rules.yml"
RULE_TESTS = sorted((ROOT / "monitoring" / "tests").glob("*.yml"))

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="needs promtool: Debian's prometheus package (make deps)"
)


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> list[str]:
    return [rule["alert"] for rule in _rules() if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_check_rules_passes():
    proc = _promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


@needs_promtool
@pytest.mark.parametrize("path", RULE_TESTS, ids=[p.stem for p in RULE_TESTS])
def test_promtool_unit_tests_pass(path):
    proc = _promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_a_wrong_expectation_fails_promtool(tmp_path):
    """The unit tests can fail: the first firing case, expected with another severity, is refused."""
    document = yaml.safe_load(RULE_TESTS[0].read_text())
    document["rule_files"] = [str(RULES)]
    case = next(c for t in document["tests"] for c in t["alert_rule_test"] if c["exp_alerts"])
    case["exp_alerts"][0]["exp_labels"]["severity"] = "none"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(document))
    assert _promtool("test", "rules", str(broken)).returncode != 0


def _cases() -> dict[str, dict[str, int]]:
    """alert -> {"firing": n, "silent": n}: how many evaluations of the unit tests expect it to fire, and
    how many expect it not to."""
    seen = {alert: {"firing": 0, "silent": 0} for alert in _alerts()}
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../prometheus-rules.yml"], path
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                assert case["alertname"] in seen, f"{path.name}: no alert {case['alertname']}"
                seen[case["alertname"]]["firing" if case.get("exp_alerts") else "silent"] += 1
    return seen


@pytest.mark.parametrize("alert", _alerts())
def test_every_alert_is_tested_firing_and_not_firing(alert):
    assert _cases()[alert]["firing"] >= 1, f"{alert}: no unit test sees it fire"
    assert _cases()[alert]["silent"] >= 1, f"{alert}: no unit test sees it stay silent"


@pytest.mark.parametrize("alert", _alerts())
def test_every_alert_tells_what_to_check(alert):
    rule = next(r for r in _rules() if r.get("alert") == alert)
    assert rule["annotations"]["summary"].strip()
    assert "check" in rule["annotations"]["description"].lower(), rule["annotations"]["description"]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_the_rules_read_only_metrics_the_daemon_exports(tmp_path):
    exported = exported_names(tmp_path) | PROMETHEUS_SERIES
    unknown = {
        rule.get("alert") or rule["record"]: sorted(metric_names(rule["expr"]) - exported)
        for rule in _rules()
    }
    assert not {k: v for k, v in unknown.items() if v}, unknown
