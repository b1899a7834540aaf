"""What the ledger says about a bulk operation: its progress, ETA and result.

Counts come from the ledger (its tallies of the items), so they cover every run of a resumed
operation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from potato_ops.db import capture, ledger, throttling
from potato_ops.db.engine import read_connection
from potato_ops.domain import operations
from potato_ops.errors import PotatoOpsError
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.database import Database

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from potato_ops.ops.bulk.throttle import Wait

MAX_LISTED = 100_000  # BulkResult.errors / changes list at most this many users

ProgressCallback = Callable[["Progress"], None]


@dataclass(frozen=True)
class UserError:
    """Why one user failed."""

    user_id: str
    error_class: str
    message: str


@dataclass(frozen=True)
class UserChange:
    """What a (dry) run did or would do to one user."""

    user_id: str
    runs_to_delete: int
    runs_to_create: int
    active_flags_changed: int


@dataclass(frozen=True)
class BulkResult:
    """The outcome of a bulk operation.

    Counts come from the ledger, so they cover every run of a resumed operation.
    ``total_duration_ms`` is this call's wall time (for a completed operation returned as
    is, finished minus started); ``average_duration_ms`` is the mean per-user share of its
    batch's time. ``timings`` sums the ms each phase took in this call, over all workers.
    ``processed_here`` is how many users this call itself processed (None for an operation
    returned as the ledger holds it), the base of this call's rate; ``taken_over`` says this
    runner was fenced out by a takeover and stopped (``status`` is then the new owner's).
    """

    operation_id: str
    total_users: int
    completed_users: int
    failed_users: int
    total_duration_ms: float
    average_duration_ms: float
    errors: list[UserError]
    status: str = "completed"
    dry_run: bool = True
    users_changed: int = 0
    changes: list[UserChange] = field(default_factory=list)
    runs_deleted: int = 0
    runs_created: int = 0
    pending_users: int = 0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    waiting: str | None = None  # why a still-running operation does not move (see Progress)
    throttled_seconds: dict[str, float] = field(default_factory=dict)  # waited, by kind, every runner
    processed_here: int | None = None
    taken_over: bool = False
    # Users rebuilt again because their marks changed after their batch (catch-up), and
    # users whose change came after the final catch-up pass (the ledger lists them).
    caught_up_users: int = 0
    late_users: int = 0


@dataclass(frozen=True)
class Progress:
    """A bulk operation's progress as the ledger records it."""

    operation_id: str
    status: str
    processed_users: int
    total_users: int
    completed_users: int
    failed_users: int
    started_at: datetime | None
    updated_at: datetime | None
    eta_seconds: float | None
    kind: str = "bulk_rebuild"
    dry_run: bool = True
    created_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    users_changed: int = 0
    cancel_requested: bool = False
    caught_up_users: int = 0  # rebuilt again: their marks changed after their batch
    # Why a running operation does not move now: one line (``throttled: replica lag 6.1 MB >
    # 1 MB``, ``waiting for window 01:00-05:00 UTC (opens in 3 h 12 min)``, ``paused: ...``),
    # and its kind (paused, window, replica_lag, load) for a metric's label; None: it moves.
    waiting: str | None = None
    waiting_kind: str | None = None
    waiting_since: datetime | None = None
    throttled_seconds: float = 0.0  # every runner's waits so far, summed
    throttle: str = ""  # its throttle settings in words ("" when none)


def waiting_fields(wait: Wait | None, since: datetime | None = None) -> dict[str, Any]:
    """Return the Progress fields that say why an operation waits (all None when it moves)."""
    if wait is None:
        return {"waiting": None, "waiting_kind": None, "waiting_since": None}
    return {"waiting": wait.reason, "waiting_kind": wait.kind, "waiting_since": since}


def _waits(conn: Connection, op: operations.OperationRow) -> tuple[dict[str, Any], dict[str, float]]:
    """Return the operation's current wait as Progress fields, and the seconds waited by kind."""
    by_kind: dict[str, float] = {}
    for episode in throttling.episodes(conn, op.id):
        by_kind[episode.kind] = by_kind.get(episode.kind, 0.0) + episode.seconds
    now: dict[str, Any] = {"waiting": None, "waiting_kind": None, "waiting_since": None}
    if op.status == operations.RUNNING:
        wait = throttling.current_wait(conn, op.id)
        if wait is not None:
            now = {"waiting": wait.reason, "waiting_kind": wait.kind, "waiting_since": wait.started_at}
    return now, by_kind


def _throttle_of(op: operations.OperationRow) -> str:
    try:
        return BulkConfig.from_json(op.config).throttle_summary()
    except PotatoOpsError:  # a config an older release wrote, now refused: say nothing of it
        return ""


def shown_status(op: operations.OperationRow, pause_requested: bool) -> str:
    """Return the status a person sees: ``paused`` for one asked to pause that has not ended."""
    if pause_requested and op.status in (operations.PENDING, operations.RUNNING, operations.INTERRUPTED):
        return operations.PAUSED
    return op.status


def _eta(
    counts: operations.ItemCounts, finishes: list[tuple[datetime, int]], started: datetime | None
) -> float | None:
    """Return seconds left at the recent rate (users per second over the last batches)."""
    if counts.pending == 0:
        return 0.0
    if len(finishes) >= 2:
        span = (finishes[-1][0] - finishes[0][0]).total_seconds()
        users = sum(n for _, n in finishes[1:])
    elif finishes and started is not None:
        span = (finishes[0][0] - started).total_seconds()
        users = finishes[0][1]
    else:
        return None
    if span <= 0 or users <= 0:
        return None
    return counts.pending / (users / span)


def progress_of(db: Database, op: operations.OperationRow) -> Progress:
    with read_connection(db.engine) as conn:
        counts = ledger.item_counts(conn, op.id)
        catch = capture.catch_up_counts(conn, op.id)
        eta = None
        if op.status == operations.RUNNING:
            eta = _eta(counts, ledger.recent_finishes(conn, op.id), op.started_at)
        elif op.status == operations.COMPLETED:
            eta = 0.0
        waiting, waited = _waits(conn, op)
        status = shown_status(op, throttling.pause_requested(conn, op.id))
    if waiting["waiting"] is not None:
        eta = None  # the recent rate says nothing while the operation waits
    return Progress(
        operation_id=op.id,
        status=status,
        processed_users=counts.processed,
        total_users=counts.total,
        completed_users=counts.completed,
        failed_users=counts.failed,
        started_at=op.started_at,
        updated_at=op.finished_at or op.heartbeat_at,
        eta_seconds=eta,
        kind=op.kind,
        dry_run=op.dry_run,
        created_at=op.created_at,
        finished_at=op.finished_at,
        error=op.error,
        users_changed=counts.changed,
        cancel_requested=op.cancel_requested,
        caught_up_users=catch.caught_up_users,
        throttled_seconds=sum(waited.values()),
        throttle=_throttle_of(op),
        **waiting,
    )


def stored_result(db: Database, op: operations.OperationRow) -> BulkResult:
    """Return a finished operation's result as the ledger holds it (no work done)."""
    duration = 0.0
    if op.started_at is not None and op.finished_at is not None:
        duration = (op.finished_at - op.started_at).total_seconds() * 1000
    with read_connection(db.engine) as conn:
        return result_from_ledger(conn, op, duration, {})


def result_from_ledger(
    conn: Connection, op: operations.OperationRow, duration_ms: float, timings: dict[str, float]
) -> BulkResult:
    counts = ledger.item_counts(conn, op.id)
    catch = capture.catch_up_counts(conn, op.id)
    waiting, waited = _waits(conn, op)
    errors = [
        UserError(i.user_id, i.error_class or "Error", i.error_message or "")
        for i in ledger.failed_items(conn, op.id, MAX_LISTED)
    ]
    changes = [
        UserChange(i.user_id, i.runs_deleted, i.runs_created, i.active_flags_changed)
        for i in ledger.changed_items(conn, op.id, MAX_LISTED)
    ]
    return BulkResult(
        operation_id=op.id,
        total_users=counts.total,
        completed_users=counts.completed,
        failed_users=counts.failed,
        total_duration_ms=duration_ms,
        average_duration_ms=counts.duration_ms / counts.processed if counts.processed else 0.0,
        errors=errors,
        dry_run=op.dry_run,
        users_changed=counts.changed,
        changes=changes,
        runs_deleted=counts.runs_deleted,
        runs_created=counts.runs_created,
        pending_users=counts.pending,
        error=op.error,
        timings=timings,
        status=shown_status(op, throttling.pause_requested(conn, op.id)),
        waiting=waiting["waiting"],
        throttled_seconds=waited,
        caught_up_users=catch.caught_up_users,
        late_users=catch.late_users,
    )
