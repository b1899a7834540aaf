"""Live series of bulk operations, each labelled with its ``operation_id``, read from the ledger.

One set of series per operation that is at work (pending, running, paused) or that stopped in
the last ``RECENT_SECONDS`` (so its final values are scraped at least once):

* ``potato_ops_operation_users{operation_id, state}``: users pending, completed, failed;
* ``potato_ops_operation_rebuilds_total{operation_id, result}``: users processed so far by
  result (completed, failed), a counter, so ``rate()`` gives users per second;
* ``potato_ops_operation_running{operation_id}``: 1 while a runner is at work, else 0;
* ``potato_ops_operation_status{operation_id, status, reason}``: 1, its labels the ledger's
  status and why it waits (throttled, paused, outside its window; empty when it does not);
* ``potato_ops_operation_rate_users_per_second`` and ``potato_ops_operation_eta_seconds``:
  the recent rate and the time left at that rate, as ``progress`` prints them (absent while
  unknown);
* ``potato_ops_operation_started_timestamp_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from potato_ops.domain.dates import as_utc
from potato_ops.monitoring.names import PREFIX
from potato_ops.ops.bulk.api import list_operations
from potato_ops.ops.bulk.results import Progress
from potato_ops.ops.database import Database

RECENT_SECONDS = 900.0
AT_WORK = ("pending", "running", "paused")
RUNNING = "running"
SCANNED_OPERATIONS = 200  # newest operations looked at per scrape
# Attributes a Progress may carry to say why a live operation is not processing right now.
_REASON_FIELDS = ("waiting", "waiting_reason", "reason")
_MAX_REASON = 120


def waiting_reason(progress: Progress) -> str:
    """Return why the operation waits, as the ledger says (empty when it does not, or cannot say)."""
    for name in _REASON_FIELDS:
        value = getattr(progress, name, None)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:_MAX_REASON]
    return ""


def recent_operations(progresses: Iterable[Progress], now: datetime) -> list[Progress]:
    """Return the operations at work and those that stopped in the last ``RECENT_SECONDS``."""
    shown: list[Progress] = []
    for progress in progresses:
        if progress.status in AT_WORK:
            shown.append(progress)
            continue
        stopped = progress.finished_at or progress.updated_at or progress.created_at
        if stopped is not None and (as_utc(now) - as_utc(stopped)).total_seconds() <= RECENT_SECONDS:
            shown.append(progress)
    return shown


def rate_users_per_second(progress: Progress) -> float | None:
    """Return the recent rate: users left over the ETA while at work, the overall rate once done."""
    pending = progress.total_users - progress.processed_users
    if pending > 0 and progress.eta_seconds:
        return pending / progress.eta_seconds
    end = progress.finished_at or progress.updated_at
    if pending == 0 and progress.started_at is not None and end is not None:
        seconds = (as_utc(end) - as_utc(progress.started_at)).total_seconds()
        return progress.processed_users / seconds if seconds > 0 else None
    return None


def operation_families(progresses: Iterable[Progress]) -> Iterator[Metric]:
    """Yield the operation series (see the module docstring) of these operations."""
    label = ["operation_id"]
    users = GaugeMetricFamily(
        PREFIX + "operation_users", "Users of a bulk operation by state.", labels=[*label, "state"]
    )
    rebuilds = CounterMetricFamily(
        PREFIX + "operation_rebuilds",
        "Users a bulk operation has processed, by result.",
        labels=[*label, "result"],
    )
    running = GaugeMetricFamily(
        PREFIX + "operation_running", "1 while the bulk operation's runner is at work.", labels=label
    )
    status = GaugeMetricFamily(
        PREFIX + "operation_status",
        "The bulk operation's status and why it waits (empty reason when it does not).",
        labels=[*label, "status", "reason"],
    )
    rate = GaugeMetricFamily(
        PREFIX + "operation_rate_users_per_second",
        "Users per second the bulk operation processes, at its recent rate.",
        labels=label,
    )
    eta = GaugeMetricFamily(
        PREFIX + "operation_eta_seconds",
        "Seconds left for the bulk operation at its recent rate.",
        labels=label,
    )
    started = GaugeMetricFamily(
        PREFIX + "operation_started_timestamp_seconds",
        "When the bulk operation started (Unix time).",
        labels=label,
    )
    for p in progresses:
        op = [p.operation_id]
        pending = p.total_users - p.processed_users
        for state, count in (
            ("pending", pending),
            ("completed", p.completed_users),
            ("failed", p.failed_users),
        ):
            users.add_metric([*op, state], float(count))
        rebuilds.add_metric([*op, "completed"], float(p.completed_users))
        rebuilds.add_metric([*op, "failed"], float(p.failed_users))
        running.add_metric(op, 1.0 if p.status == RUNNING else 0.0)
        status.add_metric([*op, p.status, waiting_reason(p)], 1.0)
        per_second = rate_users_per_second(p)
        if per_second is not None:
            rate.add_metric(op, per_second)
        if p.eta_seconds is not None:
            eta.add_metric(op, p.eta_seconds)
        if p.started_at is not None:
            started.add_metric(op, as_utc(p.started_at).timestamp())
    yield from (users, rebuilds, running, status, rate, eta, started)


class OperationsCollector:
    """A prometheus_client collector reading the ledger at every scrape."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[Metric]:
        """Yield the series of the operations at work or recently stopped."""
        progresses = list_operations(self._db, limit=SCANNED_OPERATIONS)
        yield from operation_families(recent_operations(progresses, self._db.now()))
