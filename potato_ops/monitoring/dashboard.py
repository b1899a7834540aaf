"""A Grafana dashboard of the operation and scan series, built with grafana-foundation-sdk.

Three rows: the bulk operations (users per second from the ``_total`` counters, users by state,
ETA, running and waiting status, per ``operation_id``), the invariant scan (violations of the
last scan, by kind, and how old the last scan and the last audit are) and the rebuild window
(success ratio, durations). A ``datasource`` variable picks the Prometheus, ``job`` the scrape
job(s), ``operation`` the operations shown. The JSON is Grafana's dashboard model as the SDK's
typed classes write it; the SDK loads it back (``Dashboard.from_json``) to check it.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from potato_ops.monitoring.names import EXPOSED, PREFIX

UID = "potato-ops"
TITLE = "potato-ops: bulk operations and invariant scan"
_DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
_JOB = 'job=~"$job"'
_OPERATION = f'{_JOB}, operation_id=~"$operation"'


def _query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(_DATASOURCE)
    return query.legend_format(legend) if legend else query


def _series(title: str, expr: str, legend: str, unit: str, description: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .with_target(_query(expr, legend))
        .unit(unit)
        .height(8)
        .span(12)
    )


def _stat(title: str, expr: str, legend: str, unit: str, description: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .with_target(_query(expr, legend))
        .unit(unit)
        .height(6)
        .span(6)
    )


def build_dashboard() -> board.Dashboard:
    """Return the dashboard's builder (see the module docstring)."""
    scan = EXPOSED["invariant_violations"].name
    last_scan = EXPOSED["last_scan_age_seconds"].name
    last_audit = EXPOSED["last_audit_age_seconds"].name
    return (
        board.Dashboard(TITLE)
        .uid(UID)
        .tags(["potato-ops"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(board.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            board.QueryVariable("job")
            .label("Job")
            .datasource(_DATASOURCE)
            .query(f"label_values({scan}, job)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            board.QueryVariable("operation")
            .label("Operation")
            .datasource(_DATASOURCE)
            .query(f"label_values({PREFIX}operation_users, operation_id)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_row(board.Row("Bulk operations"))
        .with_panel(
            _series(
                "Users per second",
                f"sum by (operation_id, result) (rate({PREFIX}operation_rebuilds_total{{{_OPERATION}}}[2m]))",
                "{{operation_id}} {{result}}",
                "short",
                "Users each operation processes per second, completed and failed, from its counters.",
            )
        )
        .with_panel(
            _series(
                "Users by state",
                f"{PREFIX}operation_users{{{_OPERATION}}}",
                "{{operation_id}} {{state}}",
                "short",
                "Users pending, completed and failed in each operation.",
            )
        )
        .with_panel(
            _stat(
                "Time left",
                f"{PREFIX}operation_eta_seconds{{{_OPERATION}}}",
                "{{operation_id}}",
                "s",
                "Each running operation's ETA at its recent rate.",
            )
        )
        .with_panel(
            _stat(
                "Running",
                f"{PREFIX}operation_running{{{_OPERATION}}}",
                "{{operation_id}}",
                "bool_yes_no",
                "1 while an operation's runner is at work.",
            )
        )
        .with_panel(
            _series(
                "Status and waiting reason",
                f"{PREFIX}operation_status{{{_OPERATION}}}",
                "{{operation_id}} {{status}} {{reason}}",
                "short",
                "The ledger's status of each operation and why it waits (throttled, paused, window).",
            )
        )
        .with_row(board.Row("Invariant scan"))
        .with_panel(
            _stat(
                "Violations (last scan)",
                f"{scan}{{{_JOB}}}",
                "{{job}}",
                "short",
                "Invariant violations the last whole-database scan found; 0 is healthy.",
            )
        )
        .with_panel(
            _stat(
                "Last scan age",
                f"time() - {last_scan}{{{_JOB}}}",
                "{{job}}",
                "s",
                "Time since the last whole-database scan.",
            )
        )
        .with_panel(
            _stat(
                "Last audit age",
                f"time() - {last_audit}{{{_JOB}}}",
                "{{job}}",
                "s",
                "Time since the scheduled audit last succeeded.",
            )
        )
        .with_panel(
            _series(
                "Violations by kind",
                f"{PREFIX}invariant_violations_by_kind{{{_JOB}}}",
                "{{kind}}",
                "short",
                "The last scan's violations, by invariant.",
            )
        )
        .with_row(board.Row("Rebuild window"))
        .with_panel(
            _series(
                "Rebuild success ratio",
                f"{EXPOSED['rebuild_success_rate'].name}{{{_JOB}}}",
                "{{job}}",
                "percentunit",
                "Share of the rebuilds in the window that succeeded (the playbook alerts below 99%).",
            )
        )
        .with_panel(
            _series(
                "Rebuild duration",
                f"{EXPOSED['rebuild_avg_duration_ms'].name}{{{_JOB}}}",
                "mean {{job}}",
                "s",
                "Mean rebuild duration in the window.",
            )
        )
    )


def dashboard_json() -> dict[str, Any]:
    """Return the dashboard as Grafana's JSON model (a plain mapping)."""
    data: dict[str, Any] = json.loads(json.dumps(build_dashboard().build(), cls=JSONEncoder))
    return data


def render_dashboard() -> str:
    """Return the dashboard JSON as text, for Grafana's import or provisioning."""
    return json.dumps(dashboard_json(), indent=2, sort_keys=True) + "\n"
