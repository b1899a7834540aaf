"""``potato-ops audit`` (scheduled monitoring audit) and ``potato-ops metrics`` (the figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from potato_ops.cli.common import DatabaseOption, expected_failures
from potato_ops.cli.notebooks import ReportsDirOption
from potato_ops.monitoring.metrics import DEFAULT_SLOW_THRESHOLD_MS, compute_metrics
from potato_ops.monitoring.prometheus import render_prometheus
from potato_ops.monitoring.scheduled_audit import describe_alert, run_audit
from potato_ops.storage import Storage

SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="WHEN",
        show_default=False,
        help="Start of the window: a duration back from now (90m, 24h, 7d, 2w) or an ISO "
        "datetime (naive means UTC). Default: 24h.",
    ),
]
SlowThresholdOption = Annotated[
    float,
    typer.Option("--slow-threshold-ms", min=0, help="A rebuild slower than this makes its user slow."),
]


def audit(
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            metavar="FILE",
            show_default=False,
            help="Alert rules (YAML, the playbook's form). Default: the shipped rules.",
        ),
    ] = None,
    since: SinceOption = None,
    no_notebook: Annotated[
        bool,
        typer.Option("--no-notebook", help="Quick check: skip running and archiving the audit notebook."),
    ] = False,
    reports_dir: ReportsDirOption = None,
    slow_threshold_ms: SlowThresholdOption = DEFAULT_SLOW_THRESHOLD_MS,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", min=1, help="Longest a notebook cell may run."),
    ] = 600,
    database_url: DatabaseOption = None,
) -> None:
    """Compute the metrics, evaluate the alert rules, run and archive the audit notebook.

    Made for cron or a systemd timer. Prints the figures and every firing alert; the exit
    status is the most severe alert that fired: 0 none, 10 P2, 11 P1, 12 P0. Exit 1 when the
    metrics cannot be computed (bad rules file, database unreachable, schema missing). A
    notebook that fails is reported on stderr; the exit status still follows the alerts.
    """
    storage = Storage.connect(database_url)
    try:
        outcome = run_audit(
            storage.database,
            rules_file=rules,
            since=since,
            notebook=not no_notebook,
            reports_dir=reports_dir,
            cell_timeout=timeout,
            slow_threshold_ms=slow_threshold_ms,
        )
    finally:
        storage.close()
    typer.echo(outcome.metrics.summary())
    for alert in outcome.alerts:
        typer.echo(f"FIRING {describe_alert(alert)}")
    if not outcome.alerts:
        typer.echo("no alert firing")
    if outcome.run is not None:
        typer.echo(f"notebook: {outcome.run.status}; archived in {outcome.run.run_dir}")
        typer.echo(f"manifest sha256: {outcome.run.manifest_sha256}")
        if outcome.run.not_in_database is not None:
            typer.echo(
                f"warning: the run's hash is not in the database: {outcome.run.not_in_database}", err=True
            )
    if outcome.notebook_error is not None:
        typer.echo(f"warning: {outcome.notebook_error}", err=True)
    raise typer.Exit(int(outcome.exit_code))


def metrics(
    since: SinceOption = None,
    operation: Annotated[
        str | None,
        typer.Option(
            "--operation",
            metavar="ID",
            show_default=False,
            help="Figures of one bulk operation instead of a window.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    scan: Annotated[
        bool,
        typer.Option("--scan/--no-scan", help="Run the whole-database invariant scan (the slow part)."),
    ] = True,
    slow_threshold_ms: SlowThresholdOption = DEFAULT_SLOW_THRESHOLD_MS,
    database_url: DatabaseOption = None,
) -> None:
    """Print the monitoring metrics in Prometheus text format (for a scraper), or as JSON."""
    storage = Storage.connect(database_url)
    try:
        figures = compute_metrics(
            storage.database,
            since=since,
            operation_id=operation,
            scan=scan,
            slow_threshold_ms=slow_threshold_ms,
        )
    finally:
        storage.close()
    if as_json:
        typer.echo(json.dumps(figures.to_json(), indent=2))
    else:
        typer.echo(render_prometheus(figures), nl=False)


def register(app: typer.Typer) -> None:
    """Add ``audit`` and ``metrics`` to the application."""
    app.command("audit")(expected_failures(audit))
    app.command("metrics")(expected_failures(metrics))
