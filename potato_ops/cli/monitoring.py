"""``potato-ops audit`` (the scheduled audit), ``metrics`` (the figures) and ``alerts export``.

The Prometheus-side commands (``exporter``, ``pushgateway``, ``alerts alertmanager|dashboard``)
are in ``cli.prometheus``.

One function per command, registered by ``register``; each imports what it needs when it runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from potato_ops.cli import prometheus
from potato_ops.cli.common import DatabaseOption, ReportsDirOption, expected_failures, fail, open_storage
from potato_ops.cli.prometheus import LabelOption, PushgatewayAuthOption, PushgatewayOption, parse_labels
from potato_ops.exitcodes import ExitCode

if TYPE_CHECKING:
    from datetime import datetime

    from potato_ops.monitoring.metrics import Metrics
    from potato_ops.monitoring.pushgateway import Gateway

# The default of --slow-threshold-ms; monitoring.metrics.DEFAULT_SLOW_THRESHOLD_MS is the
# same number, checked by a test (importing it here would load polars for --help).
DEFAULT_SLOW_THRESHOLD_MS = 1000.0

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
RulesOption = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        metavar="FILE",
        show_default=False,
        help="Alert rules (YAML, the playbook's form). Default: the shipped rules.",
    ),
]
TextfileOption = Annotated[
    Path | None,
    typer.Option(
        "--textfile",
        metavar="PATH",
        show_default=False,
        help="Also write the figures, replaced atomically, to this *.prom file for node_exporter's "
        "textfile collector.",
    ),
]


def _check_textfile(path: Path | None) -> None:
    """Refuse, before any work, a textfile that node_exporter would not read or that cannot be written."""
    if path is None:
        return
    if path.suffix != ".prom":
        raise fail(f"--textfile {path}: node_exporter's textfile collector reads only *.prom files")
    if not path.parent.is_dir():
        raise fail(f"--textfile {path}: folder {path.parent} does not exist")


def _check_rules_file(path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise fail(f"--rules {path}: no such file")


def _hand_over(
    figures: Metrics,
    textfile: Path | None,
    gateway: Gateway | None,
    grouping: dict[str, str],
    audited_at: datetime | None,
) -> tuple[str, ExitCode] | None:
    """Write the textfile and push to the gateway; return why that failed and its code, or None."""
    from potato_ops.errors import PotatoOpsError, PushError
    from potato_ops.monitoring.prometheus import metrics_registry, write_textfile
    from potato_ops.monitoring.pushgateway import push_registry

    try:
        if textfile is not None:
            write_textfile(textfile, figures, audited_at)
        if gateway is not None:
            push_registry(gateway, metrics_registry(figures, audited_at), grouping)
    except PushError as exc:
        return str(exc), ExitCode.PUSH_FAILED
    except PotatoOpsError as exc:
        return str(exc), ExitCode.ERROR
    return None


def audit(
    rules: RulesOption = None,
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
    textfile: TextfileOption = None,
    pushgateway: PushgatewayOption = None,
    pushgateway_auth_file: PushgatewayAuthOption = None,
    label: LabelOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Compute the metrics, evaluate the alert rules, run and archive the audit notebook.

    Made for cron or a systemd timer. Prints the figures and every firing alert; the exit
    status is the most severe alert that fired: 0 none, 10 P2, 11 P1, 12 P0. Exit 1 when the
    metrics cannot be computed (bad rules file, database unreachable, schema missing). With no
    alert firing, exit 13 when the push to the Pushgateway failed and 1 when the textfile
    could not be written; with an alert firing, its code stays and the failure is one line on
    stderr. --pushgateway pushes the group job=potato_ops_audit, database=<this database> and
    each --label. A notebook that fails is reported on stderr; the exit status follows the alerts.
    """
    _check_textfile(textfile)
    _check_rules_file(rules)
    grouping_labels = parse_labels(label)
    if pushgateway_auth_file is not None and pushgateway is None:
        raise fail("--pushgateway-auth-file needs --pushgateway", ExitCode.USAGE)
    from potato_ops.domain.dates import parse_since
    from potato_ops.monitoring.scheduled_audit import describe_alert, load_rules, run_audit

    load_rules(rules)  # a bad rules file is refused before the database is opened
    storage = open_storage(database_url, must_exist=True)
    try:
        if since is not None:
            parse_since(since, storage.now())
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
    problem = _hand_over_checked(
        outcome.metrics, textfile, pushgateway, pushgateway_auth_file, grouping_labels, storage.url
    )
    if problem is not None:
        message, code = problem
        if outcome.exit_code == ExitCode.OK:
            raise fail(message, code)
        fail(message)  # one masked line; the alert's exit code stays
    raise typer.Exit(int(outcome.exit_code))


def _hand_over_checked(
    figures: Metrics,
    textfile: Path | None,
    pushgateway: str | None,
    auth_file: Path | None,
    labels: dict[str, str],
    database: str,
) -> tuple[str, ExitCode] | None:
    """Return why the figures could not be handed over, and the exit code it deserves, or None."""
    from potato_ops.errors import PotatoOpsError, PushError
    from potato_ops.monitoring.pushgateway import database_label, grouping_key, parse_gateway

    gateway = None
    grouping: dict[str, str] = {}
    if pushgateway is not None:
        try:
            gateway = parse_gateway(pushgateway, auth_file)
            grouping = grouping_key(database_label(database), labels)
        except PushError as exc:
            return str(exc), ExitCode.PUSH_FAILED
        except PotatoOpsError as exc:
            return str(exc), ExitCode.ERROR
    return _hand_over(figures, textfile, gateway, grouping, figures.computed_at)


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
    textfile: TextfileOption = None,
    reports_dir: ReportsDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Print the monitoring metrics in Prometheus text format (for a scraper), or as JSON.

    With --textfile, write them there instead (atomically, for node_exporter). The last
    successful audit's time is read from the archive in --reports-dir.
    """
    _check_textfile(textfile)
    from potato_ops.monitoring.metrics import compute_metrics
    from potato_ops.monitoring.prometheus import render_prometheus, write_textfile
    from potato_ops.monitoring.scheduled_audit import last_audit_success

    audited_at = last_audit_success(reports_dir)

    storage = open_storage(database_url, must_exist=True)
    try:
        storage.database.check_schema()
        figures = compute_metrics(
            storage.database,
            since=since,
            operation_id=operation,
            scan=scan,
            slow_threshold_ms=slow_threshold_ms,
        )
    finally:
        storage.close()
    if textfile is not None:
        typer.echo(f"wrote {write_textfile(textfile, figures, audited_at)}")
    elif as_json:
        typer.echo(json.dumps(figures.to_json(), indent=2))
    else:
        typer.echo(render_prometheus(figures, audited_at), nl=False)


def alerts_export(
    rules: RulesOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", show_default=False, help="Write here instead of stdout."
        ),
    ] = None,
    runbook_base_url: Annotated[
        str,
        typer.Option(
            "--runbook-base-url",
            metavar="URL",
            envvar="POTATO_OPS_RUNBOOK_BASE_URL",
            show_envvar=True,
            help="Prefix for relative runbook links (e.g. your repository's URL), making them full URLs.",
        ),
    ] = "",
    job: Annotated[
        str | None,
        typer.Option(
            "--job",
            metavar="NAME",
            show_default=False,
            help="Match only this scrape job in every expression (two jobs reading the same figures "
            "would double every alert).",
        ),
    ] = None,
    label: LabelOption = None,
) -> None:
    """Compile the alert rules into a Prometheus rules file (one group; check it with promtool).

    --label NAME=VALUE adds a label to every alert (env=prod, team=potato).
    """
    _check_rules_file(rules)
    labels = parse_labels(label)
    if output is not None and not output.parent.is_dir():
        raise fail(f"--output {output}: folder {output.parent} does not exist")
    from potato_ops.monitoring.alerts import default_rules, load_rules
    from potato_ops.monitoring.rules_export import render_prometheus_rules

    text = render_prometheus_rules(
        default_rules() if rules is None else load_rules(rules), runbook_base_url, job=job, labels=labels
    )
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"--output {output}: cannot write: {exc.strerror or exc}") from None
    typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add ``audit``, ``metrics`` and the ``alerts`` commands to the application."""
    app.command("audit")(expected_failures(audit))
    app.command("metrics")(expected_failures(metrics))
    alerts_app = typer.Typer(
        help="The alert rules, for Prometheus.", no_args_is_help=True, rich_markup_mode=None
    )
    alerts_app.command("export")(expected_failures(alerts_export))
    prometheus.register(app, alerts_app)
    app.add_typer(alerts_app, name="alerts")
