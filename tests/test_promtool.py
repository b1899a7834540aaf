"""Prometheus's own checker accepts what potato-ops hands over, and agrees with the audit.

``promtool check metrics`` on a seeded database's exposition, ``check rules`` and ``test rules``
on the exported rules, on both databases. Skipped with the reason where promtool is not
installed (Debian package ``prometheus``); under CI (CI=true) that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from potato_ops.cli import app
from potato_ops.exitcodes import ExitCode
from potato_ops.monitoring.alerts import default_rules, evaluate
from potato_ops.monitoring.names import EXPOSED, METRIC_NAMES
from potato_ops.monitoring.prometheus import render_prometheus
from potato_ops.monitoring.rules_export import alert_name, prometheus_rule, render_prometheus_rules
from tests.test_prometheus import FIGURES, metrics_of

PACKAGE = Path(__file__).resolve().parents[1] / "potato_ops"
runner = CliRunner()


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool not found (Debian package prometheus): Prometheus checks NOT RUN"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - required under CI=true")
    pytest.skip(message)


def run_promtool(promtool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def cli(db_url: str | None, *args: str) -> tuple[int, str, str]:
    env = {"POTATO_DATABASE_URL": db_url} if db_url else {}
    result = runner.invoke(app, [*args], env=env)
    return result.exit_code, result.stdout, result.stderr


# --- the shipped files ---------------------------------------------------------------------------


def test_shipped_prometheus_rules_are_the_export_of_the_shipped_alerts() -> None:
    code, out, err = cli(None, "alerts", "export")

    assert (code, err) == (0, "")
    assert out == (PACKAGE / "prometheus_alerts.yaml").read_text()


def test_shipped_rules_pass_check_rules_and_their_unit_tests(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "rules", str(PACKAGE / "prometheus_alerts.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout

    tested = run_promtool(promtool, "test", "rules", str(PACKAGE / "alerts_test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_unit_tests_catch_a_moved_threshold(promtool: str, tmp_path: Path) -> None:
    # The test file must be able to fail: move one threshold and it does.
    rules = (PACKAGE / "prometheus_alerts.yaml").read_text()
    moved = rules.replace(
        "potato_ops_rebuild_success_ratio < 0.99", "potato_ops_rebuild_success_ratio <= 0.99"
    )
    assert moved != rules
    (tmp_path / "prometheus_alerts.yaml").write_text(moved)
    shutil.copy(PACKAGE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")

    tested = run_promtool(promtool, "test", "rules", str(tmp_path / "alerts_test.yaml"))

    assert tested.returncode == 1
    assert "PotatoOpsRebuildFailureRateHigh" in tested.stdout + tested.stderr


def test_the_unit_tests_catch_an_absence_rule_that_never_fires(promtool: str, tmp_path: Path) -> None:
    rules = (PACKAGE / "prometheus_alerts.yaml").read_text()
    # Only the timestamp's absence checked: a textfile without the scan's figure would go unseen.
    broken = rules.replace(
        "absent(potato_ops_invariant_violations) or absent(potato_ops_last_scan_timestamp_seconds)",
        "absent(potato_ops_last_scan_timestamp_seconds)",
    )
    assert broken != rules
    (tmp_path / "prometheus_alerts.yaml").write_text(broken)
    shutil.copy(PACKAGE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")

    tested = run_promtool(promtool, "test", "rules", str(tmp_path / "alerts_test.yaml"))

    assert tested.returncode == 1
    assert "PotatoOpsScanFiguresAbsent" in tested.stdout + tested.stderr


def test_export_carries_for_labels_annotations_and_a_runbook_base(promtool: str, tmp_path: Path) -> None:
    source = tmp_path / "rules.yaml"
    source.write_text(
        """alerts:
  - name: "Slow or failing"
    condition: "(rebuild_avg_duration_ms > 250 or rebuild_failure_rate > 0.1) and rebuild_count >= 10"
    severity: P2
    for: 1h30m
    labels: {team: potato}
    annotations:
      runbook_url: notebooks/08_troubleshooting.ipynb
"""
    )
    out_file = tmp_path / "out.yaml"

    code, _, err = cli(
        None,
        "alerts",
        "export",
        "--rules",
        str(source),
        "--output",
        str(out_file),
        "--runbook-base-url",
        "https://git.example.com/potato-ops/blob/main/",
        "--job",
        "potato-ops",
        "--label",
        "env=prod",
        "--label",
        "team=ops",
    )

    assert (code, err) == (0, "")
    assert yaml.safe_load(out_file.read_text()) == {
        "groups": [
            {
                "name": "potato-ops",
                "rules": [
                    {
                        "alert": "PotatoOpsSlowOrFailing",
                        "expr": '(potato_ops_rebuild_duration_mean_seconds{job="potato-ops"} > 0.25 or '
                        'potato_ops_rebuild_failure_ratio{job="potato-ops"} > 0.1) and '
                        'potato_ops_window_rebuilds{job="potato-ops"} >= 10',
                        "for": "1h30m",
                        # The rule's own labels win over --label.
                        "labels": {"severity": "P2", "env": "prod", "team": "potato"},
                        "annotations": {
                            "summary": "Slow or failing",
                            "runbook_url": "https://git.example.com/potato-ops/blob/main/"
                            "notebooks/08_troubleshooting.ipynb",
                            "description": "P2 when (mean duration of a rebuild in the window is above "
                            "250ms or share of the rebuilds in the window that failed is above 10%) and "
                            "rebuilds recorded in the window is at or above 10 (value {{ $value }}).",
                        },
                    }
                ],
            }
        ]
    }
    checked = run_promtool(promtool, "check", "rules", str(out_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- the audit and Prometheus agree ----------------------------------------------------------------


EVAL_SECONDS = 45 * 60  # when the agreement tests evaluate: past every default rule's for:


def series_of(exposition: str, ages: dict[str, float] | None = None) -> list[dict[str, str]]:
    """Return promtool input series, constant for an hour, from a text exposition.

    promtool's clock starts at 0: a timestamp gauge named in ``ages`` is set so that it is that
    many seconds old at ``EVAL_SECONDS``, as it was when the figures were computed.
    """
    found = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            name = sample.name + (f"{{{labels}}}" if labels else "")
            value = EVAL_SECONDS - ages[sample.name] if ages and sample.name in ages else sample.value
            found.append({"series": name, "values": f"{value!r}x60"})
    return found


def without_descriptions(rules_text: str) -> str:
    """Return an exported rules file without descriptions (they hold the value, checked elsewhere)."""
    data = yaml.safe_load(rules_text)
    for rule in data["groups"][0]["rules"]:
        rule["annotations"].pop("description", None)
    return yaml.safe_dump(data, sort_keys=False)


def agreement_test(
    figures: dict[str, float | int | None], exposition: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Return a promtool test expecting exactly the alerts the audit fires on these figures.

    The series are the figures' exposition (rendered here unless given).
    """
    rules = default_rules()
    firing = {alert.name for alert in evaluate(rules, figures)}
    if exposition is None:
        exposition = render_prometheus(metrics_of(figures))
    ages = {
        EXPOSED[name].name: float(value)
        for name, value in figures.items()
        if EXPOSED[name].age and value is not None
    }
    checks = []
    for rule in rules:
        exported = prometheus_rule(rule)
        annotations = {k: v for k, v in exported["annotations"].items() if k != "description"}
        expected = (
            [{"exp_labels": exported["labels"], "exp_annotations": annotations}]
            if rule.name in firing
            else []
        )
        checks.append(
            {"eval_time": f"{EVAL_SECONDS}s", "alertname": alert_name(rule.name), "exp_alerts": expected}
        )
    series = series_of(exposition, ages)
    test = {
        "rule_files": ["prometheus_alerts.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    return test, sorted(firing)


HEALTHY = dict(FIGURES) | {
    "rebuild_success_rate": 1.0,
    "rebuild_failure_rate": 0.0,
    "rebuild_avg_duration_ms": 250.0,
    "rebuild_invariant_violations": 0,
    "invariant_violations": 0,
    "stale_active_flags": 0,
}


@pytest.mark.parametrize(
    ("overrides", "firing"),
    [
        pytest.param({}, [], id="healthy"),
        pytest.param({"rebuild_success_rate": 0.99}, [], id="success-at-threshold"),
        pytest.param({"rebuild_success_rate": 0.98}, ["Rebuild Failure Rate High"], id="success-below"),
        pytest.param({"rebuild_avg_duration_ms": 1000.0}, [], id="duration-at-threshold"),
        pytest.param({"rebuild_avg_duration_ms": 1000.5}, ["Rebuild Performance Slow"], id="duration-above"),
        pytest.param({"rebuild_invariant_violations": 2}, ["Invariant Violations"], id="rebuild-violations"),
        pytest.param(
            {"invariant_violations": 23}, ["Invariant Violations Found By Scan"], id="scan-violations"
        ),
        pytest.param({"stale_active_flags": 1}, ["Stale Active Flags"], id="stale-flag"),
        pytest.param({"last_scan_age_seconds": 7200.0}, [], id="scan-age-at-threshold"),
        pytest.param({"last_scan_age_seconds": 9000.0}, ["Invariant Scan Stale"], id="scan-too-old"),
        pytest.param({"last_audit_age_seconds": 86400.0}, ["Audit Stale"], id="audit-too-old"),
        pytest.param({"last_audit_age_seconds": None}, [], id="audit-never-recorded"),
        pytest.param(
            {"rebuild_success_rate": None, "rebuild_avg_duration_ms": None},
            [],
            id="no-rebuild-data",
        ),
        pytest.param(
            {"invariant_violations": None, "users_with_violations": None},
            ["Scan Figures Absent"],
            id="scan-never-recorded",
        ),
        pytest.param({"last_scan_age_seconds": None}, ["Scan Figures Absent"], id="scan-time-unknown"),
    ],
)
def test_audit_and_promtool_give_the_same_answer(
    promtool: str, tmp_path: Path, overrides: dict[str, float | int | None], firing: list[str]
) -> None:
    figures = HEALTHY | overrides
    test, audit_fires = agreement_test(figures)
    (tmp_path / "prometheus_alerts.yaml").write_text(
        without_descriptions(render_prometheus_rules(default_rules()))
    )
    (tmp_path / "agree.yaml").write_text(yaml.safe_dump(test, sort_keys=False))

    tested = run_promtool(promtool, "test", "rules", str(tmp_path / "agree.yaml"))

    assert audit_fires == sorted(firing)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- on a seeded database --------------------------------------------------------------------------


def test_a_seeded_database_passes_promtool_and_alerts_p0_in_both(
    promtool: str, db_url: str, tmp_path: Path
) -> None:
    assert cli(db_url, "init-db")[0] == 0
    code, out, _ = cli(db_url, "seed", "--users", "40", "--days", "60", "--corrupt", "0.1")
    assert (code, "corrupted 4 users" in out) == (0, True)

    code, exposition, err = cli(db_url, "metrics")
    assert (code, err) == (0, "")
    checked = run_promtool(promtool, "check", "metrics", stdin=exposition)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    code, out, err = cli(db_url, "audit", "--no-notebook")
    assert code == ExitCode.ALERT_P0, out + err
    assert "FIRING P0 Invariant Violations Found By Scan" in out

    # The same figures: as the audit reads them (JSON) and as Prometheus would (the exposition).
    code, as_json, _ = cli(db_url, "metrics", "--json")
    figures = {name: json.loads(as_json)[name] for name in METRIC_NAMES}
    test, audit_fires = agreement_test(figures, exposition)
    assert "Invariant Violations Found By Scan" in audit_fires
    (tmp_path / "prometheus_alerts.yaml").write_text(without_descriptions(cli(db_url, "alerts", "export")[1]))
    (tmp_path / "agree.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    tested = run_promtool(promtool, "test", "rules", str(tmp_path / "agree.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    checked = run_promtool(promtool, "check", "rules", str(tmp_path / "prometheus_alerts.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_textfile_and_exposition_pass_check_metrics(promtool: str, tmp_path: Path) -> None:
    figures = metrics_of(
        FIGURES,
        violations_by_kind={"overlap": 1, "stale_active": 0},
        last_bulk_completed_at=datetime.now(UTC) - timedelta(hours=2),
    )
    text = render_prometheus(figures, audit_succeeded_at=datetime.now(UTC))

    checked = run_promtool(promtool, "check", "metrics", stdin=text)

    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
