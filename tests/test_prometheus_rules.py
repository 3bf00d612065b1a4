"""deploy/prometheus/alerts.yml under promtool: the rules load, their unit tests
(tests/prometheus/alerts_test.yml) pass, and every metric they name is one /metrics exports, so a
renamed metric breaks a test here rather than an alert in someone's Prometheus."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import _unavailable
from tests.test_project_files import _tested_with
from tests.test_readme import unknown_metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    """Debian's `prometheus` package has it (.ci/run installs it); under CI=true its absence fails."""
    found = shutil.which("promtool")
    if found is None:
        _unavailable("promtool", FileNotFoundError("promtool not found on PATH"))
    return found


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_rules_load(promtool):
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_expressions())} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests(promtool):
    result = _run(promtool, "test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_readme_names_the_promtool_the_suite_runs(promtool):
    version = re.search(r"version (\d+\.\d+)", _run(promtool, "--version").stdout)
    assert version, "promtool --version says no version"
    assert _tested_with()["Prometheus"] == version[1]


def test_every_rule_is_tested_firing_and_not_firing():
    """Each alert of the rules has a unit test where it fires and one where it does not."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts - firing == set(), "never tested firing"
    assert alerts - quiet == set(), "never tested quiet"


def test_every_metric_the_rules_name_exists():
    text = RULES.read_text()
    named = set(re.findall(r"\bpartnero_sync_\w+", "\n".join(_expressions())))
    assert {"partnero_sync_inbox_deliveries", "partnero_sync_up"} <= named  # the extraction works
    assert unknown_metrics(text) == []


def test_annotations_name_only_labels_that_carry_no_value():
    """Summaries and descriptions show the program, object, error code, dependency and the count:
    labels that hold names we chose, programs' and Salesforce's names and codes, never a value."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    shown = {name for group in groups for rule in group["rules"] for text in rule["annotations"].values()
             for name in re.findall(r"\{\{(.*?)\}\}", text)}
    labels = {re.sub(r"\s+", " ", name).strip() for name in shown}
    assert labels and labels <= {"$labels.program", "$labels.object", "$labels.code", "$labels.dependency",
                                 "$value", "$value | humanizeDuration"}, labels
