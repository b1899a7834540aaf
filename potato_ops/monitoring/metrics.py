"""Monitoring figures over a window of recorded history: the playbook's key metrics.

``compute_metrics`` reads what the database recorded (the rebuild history, the operations
ledger, the backups and the timezone-change log) with a few set-based statements, optionally
runs a fresh whole-database invariant scan, and returns a frozen ``Metrics`` whose
``as_dict()`` carries exactly the names alert rules may read (``METRIC_NAMES``).

The window is ``[since, until]`` (both ends included) over ``finished_at``: by default the last
24 hours of the storage clock, or a single bulk operation's rows. A figure that needs data the
window does not hold (a rate or a duration with no rebuilds) is None, never a division by zero;
``no_data`` says so. Counts are 0 then. "Rebuilds" are full and partial rebuilds; restores are
recorded in the same table but are not rebuilds and count nowhere here.

State figures (the scan, stale active flags, pending timezone changes, backups, interrupted
operations) describe the database now, whatever the window. The scan's figures are those of
the last recorded whole-database scan (``ops.scan_record``): this run's when it scanned, else
the newest one kept, with its age; None only when no scan was ever recorded.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from potato_ops.db.engine import read_connection
from potato_ops.db.metrics import (
    Window,
    backup_figures,
    history_rows,
    last_completed_operation,
    operation_figures,
    rebuild_figures,
)
from potato_ops.db.timezone_log import users_with_pending_timezone_changes
from potato_ops.domain.dates import as_utc, parse_since
from potato_ops.domain.models import InvariantReport, ViolationKind, jsonable
from potato_ops.errors import InvalidDateRangeError
from potato_ops.monitoring.names import METRIC_HELP, METRIC_NAMES
from potato_ops.ops import scan_record
from potato_ops.ops.database import Database
from potato_ops.ops.scan import count_wrong_flags, validate_invariants

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger("potato_ops")

DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_SLOW_THRESHOLD_MS = 1000.0

HISTORY_SCHEMA: dict[str, Any] = {
    "finished_at": pl.Datetime("us", "UTC"),
    "user_id": pl.String,
    "kind": pl.String,
    "duration_ms": pl.Float64,
    "success": pl.Boolean,
    "violations": pl.Int64,
}


@dataclass(frozen=True)
class Metrics:
    """The monitoring figures of one window (see the module docstring for their meaning).

    The fields named in ``METRIC_NAMES`` are the ones alert rules read; the others say
    which window they describe and hold detail for charts.
    """

    rebuild_success_rate: float | None
    rebuild_failure_rate: float | None
    rebuild_count: int
    rebuild_avg_duration_ms: float | None
    rebuild_p50_duration_ms: float | None
    rebuild_p95_duration_ms: float | None
    rebuild_max_duration_ms: float | None
    users_processed: int  # distinct users with a rebuild attempt in the window, failed or not
    rebuild_invariant_violations: int
    invariant_violations: int | None  # the last recorded scan's; None when none ever ran
    users_with_violations: int | None
    stale_active_flags: int
    timezone_changes_pending: int  # users whose latest change has not been rebuilt since
    slow_users: int  # distinct users with a rebuild in the window slower than the threshold
    backups_count: int
    backup_oldest_age_hours: float | None
    backup_newest_age_hours: float | None
    operations_failed: int  # operations that failed, finishing inside the window
    operations_interrupted: int  # operations now interrupted, whenever they stopped
    window_start: datetime | None
    window_end: datetime | None
    operation_id: str | None
    computed_at: datetime
    slow_threshold_ms: float
    scanned: bool
    violations_by_kind: dict[str, int] = field(default_factory=dict)
    # When the newest bulk operation that completed finished; None when none ever did.
    last_bulk_completed_at: datetime | None = None
    # When the scan behind the scan figures ran, and when the scheduled audit last succeeded
    # (recorded in the database); their ages at computed_at. None when never.
    last_scan_at: datetime | None = None
    last_audit_at: datetime | None = None
    last_scan_age_seconds: float | None = None
    last_audit_age_seconds: float | None = None

    @property
    def no_data(self) -> bool:
        """Return True when the window holds no rebuild, so rates and durations are None."""
        return self.rebuild_count == 0

    def as_dict(self) -> dict[str, float | int | None]:
        """Return the figures alert rules read, keyed by exactly ``METRIC_NAMES``."""
        return {name: getattr(self, name) for name in METRIC_NAMES}

    def to_json(self) -> dict[str, Any]:
        """Return every field plus ``no_data`` as JSON-ready values (ISO instants)."""
        data: dict[str, Any] = jsonable(asdict(self))
        data["no_data"] = self.no_data
        return data

    def window_text(self) -> str:
        """Return the window in words: ``operation X`` or ``START .. END``."""
        if self.operation_id is not None:
            return f"operation {self.operation_id}"
        start = self.window_start.isoformat(timespec="seconds") if self.window_start else "?"
        end = self.window_end.isoformat(timespec="seconds") if self.window_end else "?"
        return f"{start} .. {end}"

    def summary(self) -> str:
        """Return one line saying what the window held (or that it held no data)."""
        if self.no_data:
            head = f"no data: no rebuilds recorded in {self.window_text()}"
        else:
            assert self.rebuild_success_rate is not None
            head = (
                f"{self.rebuild_count} rebuilds of {self.users_processed} users in "
                f"{self.window_text()}: success {self.rebuild_success_rate:.2%}, "
                f"avg {self.rebuild_avg_duration_ms:.1f} ms, "
                f"p95 {self.rebuild_p95_duration_ms:.1f} ms, "
                f"max {self.rebuild_max_duration_ms:.1f} ms, "
                f"{self.rebuild_invariant_violations} violations found by rebuilds"
            )
        if self.scanned:
            head += f"; scan: {self.invariant_violations} violations in {self.users_with_violations} users"
        elif self.last_scan_at is not None:
            head += (
                f"; last scan ({self.last_scan_at.isoformat(timespec='seconds')}): "
                f"{self.invariant_violations} violations in {self.users_with_violations} users"
            )
        return head


# --- the window --------------------------------------------------------------------------------


def _resolve_window(
    now: datetime,
    since: str | datetime | timedelta | None,
    until: datetime | None,
    operation_id: str | None,
) -> tuple[datetime | None, datetime | None]:
    if operation_id is not None:
        if since is not None or until is not None:
            raise InvalidDateRangeError("give either a window (since/until) or an operation")
        return None, None
    end = as_utc(until) if until is not None else as_utc(now)
    start = parse_since(since if since is not None else DEFAULT_WINDOW, now)
    if start > end:
        raise InvalidDateRangeError(f"since {start.isoformat()} is after until {end.isoformat()}")
    return start, end


# --- the queries -------------------------------------------------------------------------------


def stale_active_flags(conn: Connection, now: datetime) -> int:
    """Return how many runs' active flags disagree with the rule at now, as the scan counts them."""
    return count_wrong_flags(conn, now)


def _age(now: datetime, then: datetime) -> float:
    return max(0.0, (as_utc(now) - as_utc(then)).total_seconds())


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def violations_by_kind(report: InvariantReport) -> dict[str, int]:
    """Return the number of violation records of each kind, every kind listed, in order."""
    counted = Counter(v.kind for v in report.violations)
    return {kind: counted.get(kind, 0) for kind in tuple(ViolationKind)}


# --- the figures -------------------------------------------------------------------------------


def compute_metrics(
    db: Database,
    *,
    since: str | datetime | timedelta | None = None,
    until: datetime | None = None,
    operation_id: str | None = None,
    scan: bool = True,
    slow_threshold_ms: float = DEFAULT_SLOW_THRESHOLD_MS,
    scan_source: str = scan_record.METRICS,
) -> Metrics:
    """Return the monitoring figures of a window (last 24 h by default) or of one operation.

    ``since`` is a duration back from the storage clock's now (``24h``), an ISO datetime or a
    datetime; ``scan`` runs ``validate_invariants()`` over the whole database (the costly part)
    and records it under ``scan_source``; without it, the last recorded scan's figures are used.
    """
    now = as_utc(db.now())
    start, end = _resolve_window(now, since, until, operation_id)
    with read_connection(db.engine) as conn:
        rebuilds = rebuild_figures(conn, Window(start, end, operation_id), slow_threshold_ms)
        stale = stale_active_flags(conn, now)
        pending = len(users_with_pending_timezone_changes(conn))
        backups, oldest, newest = backup_figures(conn, now)
        failed, interrupted = operation_figures(conn, start, end, operation_id)
        last_bulk = last_completed_operation(conn)
    report = validate_invariants(db, source=scan_source) if scan else None
    last = scan_record.last_scan(db)
    last_audit = scan_record.last_scan(db, scan_record.AUDIT)
    count = rebuilds.count
    if report is not None:
        found: tuple[int | None, int | None, dict[str, int]] = (
            report.total,
            len(report.users_with_violations),
            violations_by_kind(report),
        )
    elif last is not None:
        found = (last.violations, last.users_with_violations, dict(last.by_kind))
    else:
        found = (None, None, {})
    metrics = Metrics(
        rebuild_success_rate=rebuilds.successes / count if count else None,
        rebuild_failure_rate=(count - rebuilds.successes) / count if count else None,
        rebuild_count=count,
        rebuild_avg_duration_ms=rebuilds.avg_ms,
        rebuild_p50_duration_ms=rebuilds.p50_ms,
        rebuild_p95_duration_ms=rebuilds.p95_ms,
        rebuild_max_duration_ms=rebuilds.max_ms,
        users_processed=rebuilds.users,
        rebuild_invariant_violations=rebuilds.violations,
        invariant_violations=found[0],
        users_with_violations=found[1],
        stale_active_flags=stale,
        timezone_changes_pending=pending,
        slow_users=rebuilds.slow_users,
        backups_count=backups,
        backup_oldest_age_hours=oldest,
        backup_newest_age_hours=newest,
        operations_failed=failed,
        operations_interrupted=interrupted,
        window_start=start,
        window_end=end,
        operation_id=operation_id,
        computed_at=now,
        slow_threshold_ms=float(slow_threshold_ms),
        scanned=report is not None,
        violations_by_kind=found[2],
        last_bulk_completed_at=last_bulk,
        last_scan_at=last.scanned_at if last is not None else None,
        last_audit_at=last_audit.scanned_at if last_audit is not None else None,
        last_scan_age_seconds=_age(now, last.scanned_at) if last is not None else None,
        last_audit_age_seconds=_age(now, last_audit.scanned_at) if last_audit is not None else None,
    )
    log.info("metrics: %s", metrics.summary())
    return metrics


# --- frames for charts -------------------------------------------------------------------------


def metrics_frame(metrics: Metrics) -> pl.DataFrame:
    """Return one row per alert metric: ``metric``, ``value`` (null without data), ``help``."""
    values = metrics.as_dict()
    return pl.DataFrame(
        {
            "metric": list(METRIC_NAMES),
            "value": [_float(values[name]) for name in METRIC_NAMES],
            "help": [METRIC_HELP[name] for name in METRIC_NAMES],
        },
        schema={"metric": pl.String, "value": pl.Float64, "help": pl.String},
    )


def history_frame(
    db: Database,
    since: str | datetime | timedelta | None = None,
    *,
    until: datetime | None = None,
    operation_id: str | None = None,
) -> pl.DataFrame:
    """Return the window's rebuilds, one row each, oldest first (the rows the metrics count).

    Columns: finished_at (UTC), user_id, kind, duration_ms, success, violations.
    """
    start, end = _resolve_window(as_utc(db.now()), since, until, operation_id)
    with read_connection(db.engine) as conn:
        rows = history_rows(conn, Window(start, end, operation_id))
    return pl.DataFrame(rows, schema=HISTORY_SCHEMA, orient="row")


def success_rate_frame(history: pl.DataFrame, every: str = "1h") -> pl.DataFrame:
    """Return the success rate per period (hour by default) of a ``history_frame``.

    Columns: period (start of the period, UTC), rebuilds, successes, success_rate. Periods
    without rebuilds are absent.
    """
    return (
        history.group_by(pl.col("finished_at").dt.truncate(every).alias("period"))
        .agg(
            pl.len().cast(pl.Int64).alias("rebuilds"),
            pl.col("success").sum().cast(pl.Int64).alias("successes"),
        )
        .with_columns((pl.col("successes") / pl.col("rebuilds")).alias("success_rate"))
        .sort("period")
    )


def slowest_users_frame(history: pl.DataFrame, top: int = 10) -> pl.DataFrame:
    """Return the ``top`` users by their slowest rebuild: user_id, max_duration_ms, rebuilds."""
    return (
        history.group_by("user_id")
        .agg(
            pl.col("duration_ms").max().alias("max_duration_ms"),
            pl.len().cast(pl.Int64).alias("rebuilds"),
        )
        .sort(["max_duration_ms", "user_id"], descending=[True, False])
        .head(top)
    )
