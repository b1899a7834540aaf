"""Bulk rebuilds: many users in batches across workers, with a ledger for progress and resume.

A run, step by step:

1. The config is checked and, for a real run, the feature flag: bad input raises before
   anything is written.
2. The operation and one item per user go into the ledger (``potato_ops.db.ledger``), owned by
   this process (its ``Owner``: host, pid, token; on PostgreSQL it also holds the operation's
   session lock).
3. The pending items are cut into batches (``potato_ops.db.claims``) and ``max_workers``
   threads claim them one at a time, each claim a lease; workers on other hosts may join the
   same operation (``join_bulk_operation``, ``potato-ops bulk-worker OPID``; PostgreSQL only)
   and claim from the same batches (``FOR UPDATE SKIP LOCKED``), so no user is rebuilt twice.
   Each batch runs on a connection of its own in ONE writing transaction: ``rebuild_batch``
   (backups of the users it changes, delete, insert, validation of the batch), then the
   history rows and the items marked completed, then the fence: the worker must still hold
   the operation's epoch and the batch's claim, or the whole batch rolls back and a worker
   that lost the operation stops. All of a user's changes commit at once, so a reader sees a
   user's old runs or new runs, never a mix; a crash loses at most uncommitted batches, whose
   items are still pending (and whose claims lapse for the other workers). A batch with any
   failing user (violations or an error) is rolled back and each of its users is redone
   alone, so one bad user never fails its neighbours; a user failing alone gets a failed
   item (error class and message) and a failed history row. A dry run rolls every batch back
   and then writes only its items.
4. After each batch the coordinator checks the failure rate and reports progress (every
   worker's, from the ledger) to the optional callback; every claim reads a cancel request,
   so a cancel stops every worker of the operation at its next batch boundary.
5. The operation ends completed, failed (failure rate exceeded or an unexpected error),
   cancelled, or, when the process is killed, stays "running" with its owner gone, which
   ``get_rebuild_progress`` reports as interrupted and ``resume_bulk_rebuild`` takes over: it
   bumps the epoch (fencing out every earlier owner and worker) and cuts the batches afresh.

Rebuilding a user is idempotent (only wrong runs are replaced, and only changed users are
backed up), so redoing a batch that never committed can neither duplicate runs nor backups.

This module is the public API, thin functions over: ``potato_ops.ops.bulk.config`` (BulkConfig),
``potato_ops.ops.bulk.executor`` (steps 3 to 5: the batches, the workers, the coordinator) and
``potato_ops.ops.bulk.results`` (Progress, BulkResult and the ETA, read from the ledger).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence

from potato_ops.db import claims, ledger, throttling
from potato_ops.db.capture import capture_installed
from potato_ops.db.engine import read_connection, write_transaction
from potato_ops.db.locks import operation_lock
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.domain import operations
from potato_ops.errors import ConfigError, FeatureFlagError, OperationRunningError, SchemaError
from potato_ops.ops.bulk import ownership
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.bulk.executor import KIND, BulkExecutor
from potato_ops.ops.bulk.results import (
    BulkResult,
    Progress,
    ProgressCallback,
    progress_of,
    stored_result,
)
from potato_ops.ops.database import Database

log = logging.getLogger("potato_ops")


# ---------------------------------------------------------------------------- public API


def bulk_rebuild_users(
    db: Database,
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
    if user_ids is not None:
        bad = [u for u in user_ids if not isinstance(u, str) or not u.strip()]
        if bad:
            raise ConfigError(f"user_ids must be non-empty strings; found {bad[0]!r}")
    _check_flag(db, config)
    _throttle_refusal(db, config)
    operation_id = uuid.uuid4().hex
    owner = ownership.new_owner()
    try:
        with operation_lock(db.engine, operation_id) as got:
            if not got:  # a fresh random id: cannot happen unless the lock namespace collides
                raise OperationRunningError(f"operation {operation_id} is locked by another session")
            now = db.now()
            with write_transaction(db.engine) as conn:
                total = ledger.create_operation(
                    conn,
                    operation_id,
                    kind=KIND,
                    dry_run=config.dry_run,
                    config=config.to_json(),
                    user_ids=user_ids,
                    owner=owner,
                    now=now,
                )
                ledger.claim(conn, operation_id, owner, now, previous=owner.token)
                claims.plan_batches(conn, operation_id, config.claim_size)
            log.info(
                "bulk operation %s: %d users, %s, batch %d, workers %d",
                operation_id,
                total,
                "dry run" if config.dry_run else "real run",
                config.batch_size,
                config.max_workers,
            )
            return BulkExecutor(db, operation_id, config, owner, progress).execute(None)
    finally:
        ownership.release_owner(owner)


def get_rebuild_progress(db: Database, operation_id: str) -> Progress:
    """Return the operation's progress; a running one whose owner is gone is interrupted."""
    with read_connection(db.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
    return progress_of(db, _settle(db, op))


def list_operations(db: Database, status: str | None = None, limit: int = 20) -> list[Progress]:
    """Return recent operations, newest first, optionally only those with this status."""
    if status is not None and status not in operations.STATUSES:
        raise ConfigError(f"status must be one of {', '.join(operations.STATUSES)}, not {status!r}")
    if limit < 1:
        raise ConfigError(f"limit must be at least 1, not {limit}")
    with read_connection(db.engine) as conn:
        live = [op for s in operations.LIVE for op in ledger.recent_operations(conn, s, 1000)]
    for op in live:  # mark the ones whose owner is gone, so the filter sees them as such
        _settle(db, op)
    if status is None:
        with read_connection(db.engine) as conn:
            found = ledger.recent_operations(conn, None, limit)
        return [progress_of(db, op) for op in found]
    # "paused" is shown, not stored: it is a pending, running or interrupted one asked to pause.
    stored = (
        (operations.PENDING, operations.RUNNING, operations.INTERRUPTED)
        if status == operations.PAUSED
        else (status,)
    )
    with read_connection(db.engine) as conn:
        candidates = [op for s in stored for op in ledger.recent_operations(conn, s, limit + 1000)]
    candidates.sort(key=lambda op: (op.created_at, op.id), reverse=True)
    shown: list[Progress] = []
    for op in candidates:
        p = progress_of(db, op)
        if p.status == status:
            shown.append(p)
            if len(shown) == limit:
                break
    return shown


def resume_bulk_rebuild(
    db: Database,
    operation_id: str,
    *,
    failed_only: bool = False,
    progress: ProgressCallback | None = None,
) -> BulkResult:
    """Finish an operation whose owner is gone: only its users not yet completed.

    A completed operation is returned as it is (no-op), unless ``failed_only``: then only
    its failed users are tried again. Raises OperationRunningError while the operation's
    owner is alive, OperationNotFoundError for an unknown id.
    """
    with read_connection(db.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
        counts = ledger.item_counts(conn, operation_id)
        paused = throttling.pause_requested(conn, operation_id)
    config = BulkConfig.from_json(op.config)
    if paused and op.status not in (operations.COMPLETED, operations.FAILED, operations.CANCELLED):
        with write_transaction(db.engine) as conn:
            throttling.set_pause(conn, operation_id, False)
            alive = op.status in operations.LIVE and ownership.owner_alive(conn, op, db.now())
        log.info("bulk operation %s: resumed from pause", operation_id)
        if alive:  # its workers, waiting at their gates, go on by themselves
            return stored_result(db, op)
    if _nothing_to_resume(op, counts, failed_only):
        return stored_result(db, op)
    _check_flag(db, config)
    owner = ownership.new_owner()
    try:
        with operation_lock(db.engine, operation_id) as got:
            if not got:
                raise OperationRunningError(_running_message(op))
            now = db.now()
            with write_transaction(db.engine) as conn:
                op = ledger.fetch_operation(conn, operation_id)
                counts = ledger.item_counts(conn, operation_id)
                if _nothing_to_resume(op, counts, failed_only):
                    return stored_result(db, op)
                # On PostgreSQL the lock we hold proves the old owner gone.
                pg = db.dialect == "postgresql"
                if not pg and op.status in operations.LIVE and ownership.owner_alive(conn, op, now):
                    raise OperationRunningError(_running_message(op))
                if not ledger.claim(conn, operation_id, owner, now, previous=op.runner_token):
                    raise OperationRunningError(
                        f"operation {operation_id} was just taken over by another process"
                    )
                # Every earlier owner and worker is fenced out from here: their batches
                # roll back at commit, and their claims are dropped with the old batches.
                epoch = claims.take_over(conn, operation_id)
                # An operation older than the tallies is tallied here, once, with every
                # earlier worker fenced out.
                ledger.backfill_tallies(conn, operation_id)
                throttling.close_open_episodes(conn, operation_id)  # the earlier runners wait no more
                only: list[str] | None = None
                if failed_only:
                    only = [item.user_id for item in ledger.failed_items(conn, operation_id)]
                ledger.reopen_failed(conn, operation_id)
                claims.plan_batches(conn, operation_id, config.claim_size)
            log.info("bulk operation %s resumed (was %s)", operation_id, op.status)
            previous = op.status if op.status not in operations.LIVE else operations.INTERRUPTED
            run = BulkExecutor(db, operation_id, config, owner, progress, epoch=epoch)
            return run.execute(only, status_if_left=previous)
    finally:
        ownership.release_owner(owner)


def open_bulk_operation(
    db: Database, user_ids: Sequence[str] | None, config: BulkConfig | None = None
) -> str:
    """Write an operation for workers to run (``join_bulk_operation`` on any host); return its id.

    Nothing is rebuilt here. Refused on SQLite (one host) and, as ``bulk_rebuild_users``
    does, for bad input or a real run while the feature flag is off.
    """
    config = config or BulkConfig()
    _one_host_refusal(db)
    if isinstance(user_ids, str):
        raise ConfigError("user_ids must be a list of ids, not one string")
    _check_flag(db, config)
    operation_id = uuid.uuid4().hex
    owner = ownership.new_owner()
    ownership.release_owner(owner)  # the operation is nobody's until a worker joins
    now = db.now()
    with write_transaction(db.engine) as conn:
        ledger.create_operation(
            conn,
            operation_id,
            kind=KIND,
            dry_run=config.dry_run,
            config=config.to_json(),
            user_ids=user_ids,
            owner=owner,
            now=now,
        )
        claims.plan_batches(conn, operation_id, config.claim_size)
    log.info("bulk operation %s opened for workers", operation_id)
    return operation_id


def join_bulk_operation(
    db: Database,
    operation_id: str,
    *,
    max_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> BulkResult:
    """Work on an operation alongside its other workers (any host) until nothing is left.

    The worker claims batches from the ledger (leases, ``FOR UPDATE SKIP LOCKED``), so no
    user is rebuilt twice; it takes over a dead worker's batches once their lease lapsed.
    A finished operation is returned as it is. Raises ConfigError on SQLite (one host).
    """
    _one_host_refusal(db)
    if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
        raise ConfigError(f"max_workers must be at least 1, not {max_workers!r}")
    with read_connection(db.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
    if op.status in (operations.COMPLETED, operations.FAILED, operations.CANCELLED):
        return stored_result(db, op)
    config = BulkConfig.from_json(op.config)
    if max_workers is not None:
        config = dataclasses.replace(config, max_workers=max_workers)
    _check_flag(db, config)
    _throttle_refusal(db, config)
    owner = ownership.new_owner()
    try:
        with operation_lock(db.engine, operation_id, owner=False):
            with write_transaction(db.engine) as conn:
                epoch = ledger.join(conn, operation_id, db.now())
            if epoch is None:
                with read_connection(db.engine) as conn:
                    return stored_result(db, ledger.fetch_operation(conn, operation_id))
            log.info("bulk operation %s: worker %s joined", operation_id, owner.token)
            run = BulkExecutor(db, operation_id, config, owner, progress, epoch=epoch, owner=False)
            return run.execute(None, status_if_left=operations.RUNNING)
    finally:
        ownership.release_owner(owner)


def pause_bulk_rebuild(db: Database, operation_id: str) -> Progress:
    """Pause an operation: every worker, on every host, stops at its next batch boundary.

    The workers keep nothing claimed and wait (the status reads ``paused``) until
    ``resume_bulk_rebuild``; the request is in the ledger, so it outlives any runner. An
    operation that has ended is left as it is. Returns its progress.
    """
    with write_transaction(db.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
        if op.status in (operations.PENDING, operations.RUNNING, operations.INTERRUPTED):
            throttling.set_pause(conn, operation_id, True)
            log.info("bulk operation %s: pause requested", operation_id)
    return get_rebuild_progress(db, operation_id)


def throttle_episodes(db: Database, operation_id: str) -> list[throttling.Episode]:
    """Return the operation's waits (paused, window, replica lag, load), oldest first."""
    with read_connection(db.engine) as conn:
        ledger.fetch_operation(conn, operation_id)  # OperationNotFoundError for an unknown id
        return throttling.episodes(conn, operation_id)


def cancel_bulk_rebuild(db: Database, operation_id: str) -> Progress:
    """Stop an operation at its next batch boundary; return its progress.

    A live owner is asked to stop (it reports cancelled when it does); an operation whose
    owner is gone is marked cancelled at once; a finished one is left as it is.
    """
    with write_transaction(db.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
        now = db.now()
        if op.status in (operations.PENDING, operations.RUNNING) and ownership.owner_alive(conn, op, now):
            ledger.request_cancel(conn, operation_id)
        elif op.status in (operations.PENDING, operations.RUNNING, operations.INTERRUPTED):
            ledger.request_cancel(conn, operation_id)
            ledger.set_status(conn, operation_id, operations.CANCELLED, now, expect_token=op.runner_token)
    log.info("bulk operation %s: cancel requested", operation_id)
    return get_rebuild_progress(db, operation_id)


# ---------------------------------------------------------------------------- helpers


def _check_flag(db: Database, config: BulkConfig) -> None:
    _check_capture(db, config)
    if config.dry_run or config.ignore_feature_flag:
        return
    if not db.get_feature_flag(RUNS_V2_FLAG):
        raise FeatureFlagError(
            f"feature flag {RUNS_V2_FLAG} is off: a real bulk rebuild is refused "
            "(turn the flag on, or set ignore_feature_flag)"
        )


def _check_capture(db: Database, config: BulkConfig) -> None:
    """Refuse a real run on a database without the change-capture triggers (``init-db`` adds them)."""
    if config.dry_run:
        return
    with read_connection(db.engine) as conn:
        installed = capture_installed(conn)
    if not installed:
        raise SchemaError(
            "day_marks has no change-capture trigger, so the app's writes during the rebuild "
            "could be lost: run `potato-ops init-db` first"
        )


def _throttle_refusal(db: Database, config: BulkConfig) -> None:
    option = config.postgres_only_option()
    if option is not None and db.dialect != "postgresql":
        raise ConfigError(
            f"{option} needs PostgreSQL: SQLite has no standbys and no other sessions to watch "
            "(leave it out; --window, --nice-ratio and --batch-seconds work on SQLite)"
        )


def _one_host_refusal(db: Database) -> None:
    if db.dialect != "postgresql":
        raise ConfigError(
            "an operation shared by several hosts needs PostgreSQL: SQLite is one host "
            "(run bulk-rebuild there, and resume to finish an interrupted one)"
        )


def _nothing_to_resume(op: operations.OperationRow, counts: operations.ItemCounts, failed_only: bool) -> bool:
    if failed_only:
        return counts.failed == 0
    return op.status == operations.COMPLETED


def _running_message(op: operations.OperationRow) -> str:
    where = f" (pid {op.runner_pid} on {op.runner_host})" if op.runner_pid else ""
    return f"operation {op.id} is still being run by a live runner{where}: refusing to take it over"


def _settle(db: Database, op: operations.OperationRow) -> operations.OperationRow:
    """Return op; a live-status one whose owner is gone is marked interrupted in the ledger."""
    if op.status not in operations.LIVE:
        return op
    with read_connection(db.engine) as conn:
        alive = ownership.owner_alive(conn, op, db.now())
    if alive:
        return op
    with write_transaction(db.engine) as conn:
        ledger.set_status(conn, op.id, operations.INTERRUPTED, db.now(), expect_token=op.runner_token)
        return ledger.fetch_operation(conn, op.id)
