"""Bulk rebuilds: many users in batches across workers, with a ledger for progress and resume.

A run, step by step:

1. The config is checked and, for a real run, the feature flag: bad input raises before
   anything is written.
2. The operation and one item per user go into the ledger (``potato_ops.ledger``), owned by
   this process's runner (on PostgreSQL it also holds the operation's session lock).
3. The pending users, in their stable order, go in batches to ``max_workers`` threads, each
   batch on a connection of its own, in ONE writing transaction: ``rebuild_batch`` (backups
   of the users it changes, delete, insert, validation of the batch), then the history rows
   and the items marked completed. All of a user's changes commit at once, so a reader sees
   a user's old runs or new runs, never a mix; a crash loses at most uncommitted batches,
   whose items are still pending. A batch with any failing user (violations or an error) is
   rolled back and each of its users is redone alone, so one bad user never fails its
   neighbours; a user failing alone gets a failed item (error class and message) and a
   failed history row. A dry run rolls every batch back and then writes only its items.
4. Between batches the coordinator stamps the heartbeat, reads a cancel request, checks the
   failure rate, and reports progress to the optional callback.
5. The operation ends completed, failed (failure rate exceeded or an unexpected error),
   cancelled, or, when the process is killed, stays "running" with its runner gone, which
   ``get_rebuild_progress`` reports as interrupted and ``resume_bulk_rebuild`` takes over.

Rebuilding a user is idempotent (only wrong runs are replaced, and only changed users are
backed up), so redoing a batch that never committed can neither duplicate runs nor backups.

This module is the public API, thin functions over: ``potato_ops.bulk_config`` (BulkConfig),
``potato_ops.bulk_runner`` (steps 3 to 5: the batches, the workers, the coordinator) and
``potato_ops.bulk_progress`` (Progress, BulkResult and the ETA, read from the ledger).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from potato_ops import ledger
from potato_ops.bulk_config import MAX_WORKERS as MAX_WORKERS  # still reachable as bulk.MAX_WORKERS
from potato_ops.bulk_config import BulkConfig
from potato_ops.bulk_progress import MAX_LISTED as MAX_LISTED  # still reachable as bulk.MAX_LISTED
from potato_ops.bulk_progress import (
    BulkResult,
    Progress,
    ProgressCallback,
    UserChange,
    UserError,
    progress_of,
    stored_result,
)
from potato_ops.bulk_runner import KIND, BulkRun
from potato_ops.db import read_connection, write_transaction
from potato_ops.errors import ConfigError, FeatureFlagError, OperationRunningError
from potato_ops.schema import RUNS_V2_FLAG

if TYPE_CHECKING:
    from potato_ops.storage import Storage

log = logging.getLogger("potato_ops")


# ---------------------------------------------------------------------------- public API


def bulk_rebuild_users(
    storage: Storage,
    user_ids: Sequence[str] | None,
    config: BulkConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> BulkResult:
    """Rebuild the users (None: every user) in batches across workers; return the outcome.

    Raises ConfigError / InvalidDateRangeError for bad input and FeatureFlagError for a real
    run while ``ff.potato.runs_v2`` is off, before anything is written. Ids of no existing
    user fail in the ledger with UserNotFoundError; the others go on.
    """
    config = config or BulkConfig()
    if isinstance(user_ids, str):
        raise ConfigError("user_ids must be a list of ids, not one string")
    _check_flag(storage, config)
    operation_id = uuid.uuid4().hex
    runner = ledger.new_runner()
    try:
        with ledger.operation_lock(storage.engine, operation_id) as got:
            if not got:  # a fresh random id: cannot happen unless the lock namespace collides
                raise OperationRunningError(f"operation {operation_id} is locked by another session")
            now = storage.now()
            with write_transaction(storage.engine) as conn:
                total = ledger.create_operation(
                    conn,
                    operation_id,
                    kind=KIND,
                    dry_run=config.dry_run,
                    config=config.to_json(),
                    user_ids=user_ids,
                    runner=runner,
                    now=now,
                )
                ledger.claim(conn, operation_id, runner, now, previous=runner.token)
            log.info(
                "bulk operation %s: %d users, %s, batch %d, workers %d",
                operation_id,
                total,
                "dry run" if config.dry_run else "real run",
                config.batch_size,
                config.max_workers,
            )
            return BulkRun(storage, operation_id, config, runner, progress).execute(None)
    finally:
        ledger.release_runner(runner)


def get_rebuild_progress(storage: Storage, operation_id: str) -> Progress:
    """Return the operation's progress; a running one whose runner is gone is interrupted."""
    with read_connection(storage.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
    return progress_of(storage, _settle(storage, op))


def list_operations(storage: Storage, status: str | None = None, limit: int = 20) -> list[Progress]:
    """Return recent operations, newest first, optionally only those with this status."""
    if status is not None and status not in ledger.STATUSES:
        raise ConfigError(f"status must be one of {', '.join(ledger.STATUSES)}, not {status!r}")
    if limit < 1:
        raise ConfigError(f"limit must be at least 1, not {limit}")
    with read_connection(storage.engine) as conn:
        live = [op for s in ledger.LIVE for op in ledger.recent_operations(conn, s, 1000)]
    for op in live:  # mark the ones whose runner is gone, so the filter sees them as such
        _settle(storage, op)
    with read_connection(storage.engine) as conn:
        found = ledger.recent_operations(conn, status, limit)
    return [progress_of(storage, op) for op in found]


def resume_bulk_rebuild(
    storage: Storage,
    operation_id: str,
    *,
    failed_only: bool = False,
    progress: ProgressCallback | None = None,
) -> BulkResult:
    """Finish an operation whose runner is gone: only its users not yet completed.

    A completed operation is returned as it is (no-op), unless ``failed_only``: then only
    its failed users are tried again. Raises OperationRunningError while the operation's
    runner is alive, OperationNotFoundError for an unknown id.
    """
    with read_connection(storage.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
        counts = ledger.item_counts(conn, operation_id)
    config = BulkConfig.from_json(op.config)
    if _nothing_to_resume(op, counts, failed_only):
        return stored_result(storage, op)
    _check_flag(storage, config)
    runner = ledger.new_runner()
    try:
        with ledger.operation_lock(storage.engine, operation_id) as got:
            if not got:
                raise OperationRunningError(_running_message(op))
            now = storage.now()
            with write_transaction(storage.engine) as conn:
                op = ledger.fetch_operation(conn, operation_id)
                counts = ledger.item_counts(conn, operation_id)
                if _nothing_to_resume(op, counts, failed_only):
                    return stored_result(storage, op)
                # On PostgreSQL the lock we hold proves the old runner gone.
                pg = storage.dialect == "postgresql"
                if not pg and op.status in ledger.LIVE and ledger.runner_alive(conn, op, now):
                    raise OperationRunningError(_running_message(op))
                if not ledger.claim(conn, operation_id, runner, now, previous=op.runner_token):
                    raise OperationRunningError(
                        f"operation {operation_id} was just taken over by another process"
                    )
                only: list[str] | None = None
                if failed_only:
                    only = [item.user_id for item in ledger.failed_items(conn, operation_id)]
                ledger.reopen_failed(conn, operation_id)
            log.info("bulk operation %s resumed (was %s)", operation_id, op.status)
            previous = op.status if op.status not in ledger.LIVE else ledger.INTERRUPTED
            return BulkRun(storage, operation_id, config, runner, progress).execute(
                only, status_if_left=previous
            )
    finally:
        ledger.release_runner(runner)


def cancel_bulk_rebuild(storage: Storage, operation_id: str) -> Progress:
    """Stop an operation at its next batch boundary; return its progress.

    A live runner is asked to stop (it reports cancelled when it does); an operation whose
    runner is gone is marked cancelled at once; a finished one is left as it is.
    """
    with write_transaction(storage.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
        now = storage.now()
        if op.status in (ledger.PENDING, ledger.RUNNING) and ledger.runner_alive(conn, op, now):
            ledger.request_cancel(conn, operation_id)
        elif op.status in (ledger.PENDING, ledger.RUNNING, ledger.INTERRUPTED):
            ledger.request_cancel(conn, operation_id)
            ledger.set_status(conn, operation_id, ledger.CANCELLED, now, expect_token=op.runner_token)
    log.info("bulk operation %s: cancel requested", operation_id)
    return get_rebuild_progress(storage, operation_id)


# ---------------------------------------------------------------------------- helpers


def _check_flag(storage: Storage, config: BulkConfig) -> None:
    if config.dry_run or config.ignore_feature_flag:
        return
    if not storage.get_feature_flag(RUNS_V2_FLAG):
        raise FeatureFlagError(
            f"feature flag {RUNS_V2_FLAG} is off: a real bulk rebuild is refused "
            "(turn the flag on, or set ignore_feature_flag)"
        )


def _nothing_to_resume(op: ledger.OperationRow, counts: ledger.ItemCounts, failed_only: bool) -> bool:
    if failed_only:
        return counts.failed == 0
    return op.status == ledger.COMPLETED


def _running_message(op: ledger.OperationRow) -> str:
    where = f" (pid {op.runner_pid} on {op.runner_host})" if op.runner_pid else ""
    return f"operation {op.id} is still being run by a live runner{where}: refusing to take it over"


def _settle(storage: Storage, op: ledger.OperationRow) -> ledger.OperationRow:
    """Return op; a live-status one whose runner is gone is marked interrupted in the ledger."""
    if op.status not in ledger.LIVE:
        return op
    with read_connection(storage.engine) as conn:
        alive = ledger.runner_alive(conn, op, storage.now())
    if alive:
        return op
    with write_transaction(storage.engine) as conn:
        ledger.set_status(conn, op.id, ledger.INTERRUPTED, storage.now(), expect_token=op.runner_token)
        return ledger.fetch_operation(conn, op.id)


__all__ = [
    "BulkConfig",
    "BulkResult",
    "Progress",
    "UserChange",
    "UserError",
    "bulk_rebuild_users",
    "cancel_bulk_rebuild",
    "get_rebuild_progress",
    "list_operations",
    "resume_bulk_rebuild",
]
