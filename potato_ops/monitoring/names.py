"""The names of the monitoring figures: the ones alert rules read, and their Prometheus names.

Alert rules keep the playbook's words (``rebuild_avg_duration_ms``); what a Prometheus server
scrapes follows its own conventions (a ``potato_ops_`` prefix, base units: seconds, ratios
0..1; ``_total`` only on counters). ``EXPOSED`` ties each rule word to its exposed gauge and the
factor that converts the rule's unit into the exposed one, so a rule can be compiled into
PromQL over the exposed names. Pure data: nothing here imports a heavy library.
"""

from __future__ import annotations

from dataclasses import dataclass

METRIC_HELP: dict[str, str] = {
    "rebuild_success_rate": "share 0..1 of rebuilds in the window that succeeded",
    "rebuild_failure_rate": "share 0..1 of rebuilds in the window that failed",
    "rebuild_count": "number of rebuilds in the window",
    "rebuild_avg_duration_ms": "mean duration of a rebuild in the window, in milliseconds",
    "rebuild_p50_duration_ms": "median duration of a rebuild in the window, in milliseconds",
    "rebuild_p95_duration_ms": "95th percentile rebuild duration in the window, in milliseconds",
    "rebuild_max_duration_ms": "longest rebuild in the window, in milliseconds",
    "users_processed": "number of users whose runs were rebuilt in the window",
    "rebuild_invariant_violations": "invariant violations found by rebuilds in the window",
    "invariant_violations": "invariant violations found by the last whole-database scan",
    "users_with_violations": "number of users with at least one invariant violation (last scan)",
    "stale_active_flags": "runs still flagged active although they have ended",
    "timezone_changes_pending": "timezone changes whose runs have not been rebuilt yet",
    "slow_users": "users whose rebuild took longer than the slow-user threshold",
    "backups_count": "number of run backups kept",
    "backup_oldest_age_hours": "age of the oldest backup, in hours",
    "backup_newest_age_hours": "age of the newest backup, in hours",
    "operations_failed": "bulk operations that ended in failure",
    "operations_interrupted": "bulk operations that stopped before finishing",
    "last_scan_age_seconds": "seconds since the last whole-database invariant scan",
    "last_audit_age_seconds": "seconds since the scheduled audit last succeeded",
}

METRIC_NAMES: tuple[str, ...] = tuple(METRIC_HELP)

PREFIX = "potato_ops_"


@dataclass(frozen=True)
class ExposedName:
    """How one rule metric is exposed: the gauge's name, its help, and rule unit -> exposed unit."""

    name: str
    help: str
    scale: float = 1.0  # exposed value = rule value * scale (ms -> s is 0.001)
    # An age is exposed as the Unix time it counts from (a gauge that does not need its writer
    # to keep running to grow old); PromQL reads it back as ``time() - name``.
    age: bool = False

    def promql(self, matchers: str = "") -> str:
        """Return the PromQL reading this figure in the exposed unit (``matchers``: ``{job="x"}``)."""
        selector = self.name + matchers
        return f"(time() - {selector})" if self.age else selector


_MS = 0.001
_HOURS = 3600.0

EXPOSED: dict[str, ExposedName] = {
    "rebuild_success_rate": ExposedName(
        PREFIX + "rebuild_success_ratio", "Share 0..1 of the rebuilds in the window that succeeded."
    ),
    "rebuild_failure_rate": ExposedName(
        PREFIX + "rebuild_failure_ratio", "Share 0..1 of the rebuilds in the window that failed."
    ),
    "rebuild_count": ExposedName(PREFIX + "window_rebuilds", "Rebuilds recorded in the window."),
    "rebuild_avg_duration_ms": ExposedName(
        PREFIX + "rebuild_duration_mean_seconds", "Mean duration of a rebuild in the window.", _MS
    ),
    "rebuild_p50_duration_ms": ExposedName(
        PREFIX + "rebuild_duration_p50_seconds", "Median rebuild duration in the window.", _MS
    ),
    "rebuild_p95_duration_ms": ExposedName(
        PREFIX + "rebuild_duration_p95_seconds", "95th percentile rebuild duration in the window.", _MS
    ),
    "rebuild_max_duration_ms": ExposedName(
        PREFIX + "rebuild_duration_max_seconds", "Longest rebuild in the window.", _MS
    ),
    "users_processed": ExposedName(
        PREFIX + "window_users_processed", "Users whose runs were rebuilt in the window."
    ),
    "rebuild_invariant_violations": ExposedName(
        PREFIX + "window_rebuild_invariant_violations",
        "Invariant violations found by rebuilds in the window.",
    ),
    "invariant_violations": ExposedName(
        PREFIX + "invariant_violations", "Invariant violations found by the last whole-database scan."
    ),
    "users_with_violations": ExposedName(
        PREFIX + "users_with_violations", "Users with at least one invariant violation (last scan)."
    ),
    "stale_active_flags": ExposedName(
        PREFIX + "stale_active_flags", "Runs whose active flag disagrees with the user's local today."
    ),
    "timezone_changes_pending": ExposedName(
        PREFIX + "timezone_changes_pending",
        "Users whose timezone changed and whose runs are not rebuilt yet.",
    ),
    "slow_users": ExposedName(
        PREFIX + "window_slow_users", "Users with a rebuild slower than the slow threshold in the window."
    ),
    "backups_count": ExposedName(PREFIX + "backups", "Run backups kept in the database."),
    "backup_oldest_age_hours": ExposedName(
        PREFIX + "backup_oldest_age_seconds", "Age of the oldest run backup.", _HOURS
    ),
    "backup_newest_age_hours": ExposedName(
        PREFIX + "backup_newest_age_seconds", "Age of the newest run backup.", _HOURS
    ),
    "operations_failed": ExposedName(
        PREFIX + "window_operations_failed", "Bulk operations that failed in the window."
    ),
    "operations_interrupted": ExposedName(
        PREFIX + "operations_interrupted", "Bulk operations stopped before finishing, now."
    ),
    "last_scan_age_seconds": ExposedName(
        PREFIX + "last_scan_timestamp_seconds",
        "When the last whole-database invariant scan ran (Unix time).",
        age=True,
    ),
    "last_audit_age_seconds": ExposedName(
        PREFIX + "last_audit_success_timestamp_seconds",
        "When the scheduled audit last finished its figures and rules without failing (Unix time).",
        age=True,
    ),
}
