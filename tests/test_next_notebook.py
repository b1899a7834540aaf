"""Verdicts and alert lines name the notebook to run next."""

from __future__ import annotations

from potato_ops.monitoring.alerts import default_rules, evaluate
from potato_ops.monitoring.names import METRIC_NAMES
from potato_ops.runbook.monitoring_audit import AlertsView, runbooks_of


def test_each_firing_alert_and_the_audit_name_the_notebook_to_run_next() -> None:
    rules = default_rules()
    metrics: dict[str, float | int | None] = dict.fromkeys(METRIC_NAMES)
    metrics.update(invariant_violations=8, stale_active_flags=2, rebuild_avg_duration_ms=50.0)
    metrics.update(last_scan_age_seconds=60, last_audit_age_seconds=60)  # scanned a minute ago
    fired = evaluate(rules, metrics)
    runbooks = runbooks_of(rules)
    view = AlertsView("the shipped defaults", len(rules), fired, runbooks)
    lines = dict((text.split(":")[0], text) for _, text in view.lines())
    assert lines["P0 Invariant Violations Found By Scan"].endswith("; next: run 05_error_recovery")
    assert lines["P0 Stale Active Flags"].endswith("; next: run 08_troubleshooting")
    assert view.next_notebooks() == ["05_error_recovery", "08_troubleshooting"]


def test_the_shipped_rules_point_every_alert_at_a_notebook() -> None:
    names = {r.name: str(r.annotations.get("runbook_url", "")) for r in default_rules()}
    assert all(url.startswith("notebooks/0") for url in names.values()), names
