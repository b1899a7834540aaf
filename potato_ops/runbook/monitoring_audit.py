"""07 monitoring audit: the playbook's key metrics over a window, the alert rules, the charts.

The whole-database invariant scan is the costly part (most of the time on a large database),
so it runs once: its report feeds the metrics' scan figures and the charts alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from potato_ops.charts.monitoring import (
    duration_histogram,
    slowest_users_chart,
    success_rate_chart,
    violations_by_kind_chart,
)
from potato_ops.domain.models import InvariantReport
from potato_ops.monitoring.alerts import (
    AlertRule,
    FiringAlert,
    default_rules,
    evaluate,
    highest_severity,
    load_rules,
)
from potato_ops.monitoring.metrics import (
    Metrics,
    compute_metrics,
    history_frame,
    metrics_frame,
    slowest_users_frame,
    success_rate_frame,
    violations_by_kind,
)
from potato_ops.runbook.database_views import run_lengths_chart, timezones_chart
from potato_ops.runbook.display import Chart, Shown, Verdict, user_emails, violations_frame
from potato_ops.runbook.params import AuditParams
from potato_ops.runbook.session import Session

SUCCESS_RATE_TARGET = 0.99
AVG_DURATION_TARGET_MS = 1000.0


@dataclass(frozen=True, repr=False)
class AuditFigures(Shown):
    """The window's metrics, the scan's report and the rebuilds behind them."""

    metrics: Metrics
    report: InvariantReport | None
    history: pl.DataFrame
    emails: Mapping[str, str] = field(default_factory=dict)  # of the slowest users, for labels

    def title(self) -> str:
        return f"Key metrics: {self.metrics.window_text()}"

    def lines(self) -> list[tuple[str, str]]:
        m = self.metrics
        found: list[tuple[str, str]] = []
        if m.no_data:
            found.append(("info", "no rebuilds recorded in the window: rates and durations have no data"))
        else:
            assert m.rebuild_success_rate is not None and m.rebuild_avg_duration_ms is not None
            found.append(
                (
                    "ok" if m.rebuild_success_rate >= SUCCESS_RATE_TARGET else "problem",
                    f"rebuild success rate {m.rebuild_success_rate:.2%} over {m.rebuild_count} rebuilds "
                    f"(target > {SUCCESS_RATE_TARGET:.0%})",
                )
            )
            found.append(
                (
                    "ok" if m.rebuild_avg_duration_ms <= AVG_DURATION_TARGET_MS else "problem",
                    f"average rebuild {m.rebuild_avg_duration_ms:.1f} ms, "
                    f"p95 {m.rebuild_p95_duration_ms:.1f} ms "
                    f"(target < {AVG_DURATION_TARGET_MS:.0f} ms)",
                )
            )
        if self.report is not None:
            found.append(
                (
                    "ok" if self.report.ok else "problem",
                    f"invariant violations: {self.report.total} in {len(self.report.users_with_violations)} "
                    f"of {self.report.users_scanned} users (target 0)",
                )
            )
        else:
            found.append(("warn", "invariant scan skipped (scan=False)"))
        found.append(
            ("ok" if not m.stale_active_flags else "warn", f"stale active flags: {m.stale_active_flags}")
        )
        found.append(
            (
                "ok" if not m.timezone_changes_pending else "warn",
                f"timezone changes pending: {m.timezone_changes_pending}",
            )
        )
        found.append(("info", f"backups kept: {m.backups_count}"))
        found.append(
            (
                "ok" if not (m.operations_failed or m.operations_interrupted) else "warn",
                f"bulk operations failed: {m.operations_failed}, interrupted: {m.operations_interrupted}",
            )
        )
        return found

    def frame(self) -> pl.DataFrame:
        """Return every alert metric with its value and meaning."""
        return metrics_frame(self.metrics)

    def violations_frame(self, limit: int = 200) -> pl.DataFrame:
        """Return the first violations the scan found."""
        return violations_frame(self.report.violations if self.report else [], limit)


def audit_metrics(session: Session, params: AuditParams) -> AuditFigures:
    """Return the window's metrics with one invariant scan (when ``scan``) and its history."""
    storage = session.storage
    report = storage.validate_invariants() if params.scan else None
    metrics = compute_metrics(
        storage.database, since=params.since, scan=False, slow_threshold_ms=params.slow_threshold_ms
    )
    if report is not None:
        metrics = replace(
            metrics,
            invariant_violations=report.total,
            users_with_violations=len(report.users_with_violations),
            scanned=True,
            violations_by_kind=violations_by_kind(report),
        )
    history = history_frame(storage.database, params.since)
    slowest = slowest_users_frame(history, params.top_slow_users)["user_id"].to_list()
    return AuditFigures(metrics, report, history, user_emails(storage, slowest))


@dataclass(frozen=True, repr=False)
class AlertsView(Shown):
    """The alert rules evaluated against the metrics."""

    source: str
    rules: int
    firing: list[FiringAlert] = field(default_factory=list)
    runbooks: dict[str, str] = field(default_factory=dict)  # alert name -> the notebook to run next

    def next_notebooks(self) -> list[str]:
        """Return the notebooks the firing alerts point at, most severe first, once each."""
        ordered = sorted(self.firing, key=lambda a: a.severity)
        return list(dict.fromkeys(self.runbooks[a.name] for a in ordered if a.name in self.runbooks))

    @property
    def highest(self) -> str | None:
        """Return the most severe firing severity, or None."""
        return highest_severity(self.firing)

    def title(self) -> str:
        return f"Alerts: {self.rules} rules from {self.source}"

    def lines(self) -> list[tuple[str, str]]:
        if not self.firing:
            return [("ok", "no alert fires")]
        return [
            (
                "problem",
                f"{a.severity} {a.name}: {a.condition} ({a.values_text()})"
                + (f"; next: run {self.runbooks[a.name]}" if a.name in self.runbooks else ""),
            )
            for a in self.firing
        ]

    def frame(self) -> pl.DataFrame:
        """Return the firing alerts: severity, name, condition, values."""
        return pl.DataFrame(
            {
                "severity": [a.severity for a in self.firing],
                "name": [a.name for a in self.firing],
                "condition": [a.condition for a in self.firing],
                "values": [a.values_text() for a in self.firing],
            },
            schema={"severity": pl.String, "name": pl.String, "condition": pl.String, "values": pl.String},
        )


def evaluate_alerts(params: AuditParams, figures: AuditFigures) -> AlertsView:
    """Return the rules (the shipped defaults unless ``alert_rules``) that fire on the metrics."""
    rules = load_rules(params.alert_rules) if params.alert_rules else default_rules()
    source = str(params.alert_rules) if params.alert_rules else "the shipped defaults"
    return AlertsView(source, len(rules), evaluate(rules, figures.metrics.as_dict()), runbooks_of(rules))


def runbooks_of(rules: Sequence[AlertRule]) -> dict[str, str]:
    """Return the notebook each rule's ``runbook_url`` names (``05_error_recovery``), by rule name."""
    urls = {r.name: r.annotations.get("runbook_url") for r in rules}
    return {name: Path(str(url)).stem for name, url in urls.items() if url}


def duration_chart(figures: AuditFigures) -> Chart:
    """Return the histogram of the window's rebuild durations."""
    chart = duration_histogram(figures.history, slow_threshold_ms=figures.metrics.slow_threshold_ms)
    return Chart("rebuild durations", chart)


def success_chart(figures: AuditFigures) -> Chart:
    """Return the success rate per hour over the window."""
    m = figures.metrics
    window = (m.window_start, m.window_end) if m.window_start and m.window_end else None
    return Chart("success rate", success_rate_chart(success_rate_frame(figures.history), window=window))


def slowest_chart(figures: AuditFigures, top: int = 10) -> Chart:
    """Return the window's slowest users."""
    frame = slowest_users_frame(figures.history, top)
    return Chart("slowest users", slowest_users_chart(frame, emails=figures.emails))


def violations_chart(figures: AuditFigures) -> Chart:
    """Return the violations per kind the scan found."""
    return Chart("violations by kind", violations_by_kind_chart(figures.metrics.violations_by_kind))


def lengths_chart(session: Session) -> Chart:
    """Return the run length distribution over the whole database."""
    return run_lengths_chart(session, title="Run length distribution (all users)")


def affected_timezones_chart(session: Session, figures: AuditFigures) -> Chart:
    """Return the timezones of the users with violations."""
    users = figures.report.users_with_violations if figures.report else []
    return timezones_chart(session, users, title="Timezones of users with violations")


def audit_verdict(params: AuditParams, figures: AuditFigures, alerts: AlertsView) -> Verdict:
    """Return the one-line outcome of the audit and its figures (every alert metric)."""
    m = figures.metrics
    record: dict[str, object] = {
        **params.common.record(),
        **m.as_dict(),
        "window": m.window_text(),
        "violations_by_kind": m.violations_by_kind,
        "alerts_firing": [a.name for a in alerts.firing],
        "highest_severity": alerts.highest,
    }
    parts = []
    if m.no_data:
        parts.append("no rebuilds in the window")
    else:
        parts.append(f"{m.rebuild_count} rebuilds, success {m.rebuild_success_rate:.2%}")
    if figures.report is not None:
        r = figures.report
        parts.append(
            "all invariants hold"
            if r.ok
            else f"{r.total} violations in {len(r.users_with_violations)} of {r.users_scanned} users"
        )
    if alerts.firing:
        parts.append(f"{len(alerts.firing)} alerts firing (highest {alerts.highest})")
        if alerts.next_notebooks():
            parts.append("next: run " + " then ".join(alerts.next_notebooks()))
    else:
        parts.append("no alert fires")
    problem = bool(alerts.firing) or (figures.report is not None and not figures.report.ok)
    return Verdict("audit: " + "; ".join(parts), "problem" if problem else "ok", record)
