"""The scheduled audit behind ``potato-ops audit``: metrics, alert rules, the archived notebook.

``run_audit`` computes the metrics of a window, evaluates the alert rules on them, then (unless
told not to) runs the monitoring audit notebook through execute_notebook, which archives it. The exit
code follows the most severe alert that fired (``ExitCode.OK``, ``ALERT_P2``, ``ALERT_P1``,
``ALERT_P0``), so a scheduler can act on it. A notebook that fails does not change that code:
the figures behind the alerts were computed here; its failure is reported in ``notebook_error``.
Only when the rules cannot be read or the metrics cannot be computed does ``run_audit`` raise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_secrets
from potato_ops.config import reports_dir as default_reports_dir
from potato_ops.errors import NotebookError, PotatoOpsError
from potato_ops.exitcodes import ExitCode
from potato_ops.monitoring.alerts import AlertRule, FiringAlert, default_rules, evaluate, highest_severity
from potato_ops.monitoring.alerts import load_rules as load_rules_file
from potato_ops.monitoring.metrics import DEFAULT_SLOW_THRESHOLD_MS, Metrics, compute_metrics
from potato_ops.notebook_runs.archive import list_executions
from potato_ops.notebook_runs.execute import ExecutionRecord, execute_notebook
from potato_ops.notebook_runs.preflight import check_reports_dir
from potato_ops.ops import scan_record
from potato_ops.ops.database import Database

log = logging.getLogger("potato_ops")

AUDIT_NOTEBOOK = "07_monitoring_audit"
# The notebook's kernel reads the database URL from this variable, set only while it runs, so
# the URL (and its password) never becomes a parameter or lands in the archive.
AUDIT_DATABASE_URL_ENV = "POTATO_OPS_AUDIT_DATABASE_URL"

SEVERITY_EXIT_CODES: dict[str | None, ExitCode] = {
    None: ExitCode.OK,
    "P2": ExitCode.ALERT_P2,
    "P1": ExitCode.ALERT_P1,
    "P0": ExitCode.ALERT_P0,
}
_FAILED_RUN_STATUSES = ("error", "timeout")


@dataclass(frozen=True)
class AuditOutcome:
    """What one audit found: the figures, the alerts that fired and the archived notebook run."""

    metrics: Metrics
    alerts: tuple[FiringAlert, ...]
    severity: str | None  # the most severe alert that fired, None when none did
    exit_code: ExitCode
    run: ExecutionRecord | None  # None with --no-notebook, or when the notebook could not start
    notebook_error: str | None = None  # why the notebook did not run, or how it failed


def exit_code_for(severity: str | None) -> ExitCode:
    """Return the exit code of an audit whose most severe firing alert has this severity."""
    return SEVERITY_EXIT_CODES[severity]


def describe_alert(alert: FiringAlert) -> str:
    """Return one line naming the alert, its condition and the values it read."""
    return f"{alert.severity} {alert.name}: {alert.condition} ({alert.values_text()})"


def last_audit_success(reports_dir: str | os.PathLike[str] | None = None) -> datetime | None:
    """Return when the newest archived audit notebook run finished without failing, or None.

    "Without failing" means its verdict was reached, ok or problem: a red verdict is a
    successful audit that found something. None when the archive holds no such run.
    """
    for entry in reversed(list_executions(reports_dir)):
        if entry.notebook == AUDIT_NOTEBOOK and entry.status not in _FAILED_RUN_STATUSES:
            try:
                finished = datetime.fromisoformat(entry.finished_at)
            except ValueError:
                continue
            return finished if finished.tzinfo is not None else finished.replace(tzinfo=UTC)
    return None


def load_rules(rules_file: str | os.PathLike[str] | None) -> list[AlertRule]:
    """Return the rules of the file, or the shipped defaults when there is none."""
    return default_rules() if rules_file is None else load_rules_file(rules_file)


def run_audit(
    db: Database,
    *,
    rules_file: str | os.PathLike[str] | None = None,
    since: str | datetime | timedelta | None = None,
    notebook: bool = True,
    reports_dir: str | os.PathLike[str] | None = None,
    cell_timeout: float | None = 600,
    slow_threshold_ms: float = DEFAULT_SLOW_THRESHOLD_MS,
    operator: str = "",
    ticket: str = "",
) -> AuditOutcome:
    """Return the audit of the window (last 24 h by default): figures, alerts, notebook run.

    Raises RuleError for a bad rules file, ReportError when the reports folder cannot take the
    record, and a PotatoOpsError when the metrics cannot be computed (schema missing, database
    unreachable); nothing is archived then.
    """
    rules = load_rules(rules_file)
    if notebook:
        # The audit's record is its notebook run: refuse before any work if it cannot be kept.
        check_reports_dir(default_reports_dir(reports_dir))
    db.check_schema()
    try:
        metrics = compute_metrics(
            db, since=since, slow_threshold_ms=slow_threshold_ms, scan_source=scan_record.AUDIT
        )
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise PotatoOpsError(
            f"cannot compute the metrics on {db.url}: {type(exc).__name__}: {mask_secrets(detail)}"
        ) from exc
    alerts = tuple(evaluate(rules, metrics.as_dict()))
    severity = highest_severity(alerts)
    for alert in alerts:
        log.info("alert firing: %s", describe_alert(alert))
    run: ExecutionRecord | None = None
    notebook_error: str | None = None
    if notebook:
        run, notebook_error = _run_audit_notebook(
            db, metrics, rules_file, reports_dir, cell_timeout, operator, ticket
        )
    return AuditOutcome(
        metrics=metrics,
        alerts=alerts,
        severity=severity,
        exit_code=exit_code_for(severity),
        run=run,
        notebook_error=notebook_error,
    )


def _run_audit_notebook(
    db: Database,
    metrics: Metrics,
    rules_file: str | os.PathLike[str] | None,
    reports_dir: str | os.PathLike[str] | None,
    cell_timeout: float | None,
    operator: str,
    ticket: str,
) -> tuple[ExecutionRecord | None, str | None]:
    """Return the archived run of the audit notebook and, if it failed, why."""
    parameters: dict[str, object] = {
        "database_url_env": AUDIT_DATABASE_URL_ENV,
        # The instant, not "24h": the notebook must cover the window the alerts judged.
        "since": metrics.window_start.isoformat() if metrics.window_start else "24h",
        "alert_rules": str(Path(rules_file).resolve()) if rules_file is not None else "",
        "slow_threshold_ms": metrics.slow_threshold_ms,
    }
    parameters.update({k: v for k, v in (("operator", operator), ("ticket", ticket)) if v})
    try:
        with _database_url_exported(db):
            run = execute_notebook(
                AUDIT_NOTEBOOK, parameters, reports_dir=reports_dir, cell_timeout=cell_timeout
            )
    except NotebookError as exc:
        log.info("the monitoring notebook did not run: %s", exc)
        return None, f"the monitoring notebook did not run: {exc}"
    if run.status in _FAILED_RUN_STATUSES:
        verdict = str(run.result.get("verdict", ""))
        message = f"the monitoring notebook ended with {run.status}: {verdict} ({run.run_dir})"
        log.info("%s", message)
        return run, message
    return run, None


def _storage_url(db: Database) -> str:
    """Return the db's full URL (password included), SQLite paths made absolute."""
    url = db.engine.url
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        url = url.set(database=str(Path(database).resolve()))
    return url.render_as_string(hide_password=False)


@contextmanager
def _database_url_exported(db: Database) -> Iterator[None]:
    """Put the db's URL in AUDIT_DATABASE_URL_ENV for a kernel started in the block."""
    saved = os.environ.get(AUDIT_DATABASE_URL_ENV)
    os.environ[AUDIT_DATABASE_URL_ENV] = _storage_url(db)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(AUDIT_DATABASE_URL_ENV, None)
        else:
            os.environ[AUDIT_DATABASE_URL_ENV] = saved
