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
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from potato_ops import history, ledger
from potato_ops.config import mask_secrets
from potato_ops.db import read_connection, write_transaction
from potato_ops.errors import (
    ConfigError,
    FeatureFlagError,
    OperationRunningError,
    UserNotFoundError,
)
from potato_ops.queries import fetch_users
from potato_ops.rebuild import BACKUP_CHANGED, BACKUP_NEVER, BatchOptions, UserOutcome, rebuild_batch
from potato_ops.runs import parse_date_range
from potato_ops.schema import RUNS_V2_FLAG

if TYPE_CHECKING:
    from potato_ops.storage import Storage

log = logging.getLogger("potato_ops")

KIND = "bulk_rebuild"
MAX_WORKERS = 16  # the PostgreSQL pool holds 20 connections; one is the runner lock's
FAILURE_RATE_MIN_USERS = 100  # the failure rate is judged once this many users were processed
HEARTBEAT_EVERY_S = 1.0
MAX_LISTED = 100_000  # BulkResult.errors / changes list at most this many users
_MESSAGE_CHARS = 500

ProgressCallback = Callable[["Progress"], None]


@dataclass(frozen=True)
class BulkConfig:
    """How a bulk rebuild runs (the playbook's options plus the safety ones).

    Checked when made: ConfigError for batch_size or max_workers below 1 (or max_workers
    above 16) or max_failure_rate outside [0, 1]; InvalidDateRangeError for dates.
    """

    batch_size: int = 10
    max_workers: int = 5
    dry_run: bool = True
    from_date: date | str | None = None
    to_date: date | str | None = None
    skip_backup: bool = False
    max_failure_rate: float = 0.01
    ignore_feature_flag: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number of at least 1, not {self.batch_size!r}")
        if not isinstance(self.max_workers, int) or not 1 <= self.max_workers <= MAX_WORKERS:
            raise ConfigError(f"max_workers must be between 1 and {MAX_WORKERS}, not {self.max_workers!r}")
        rate = self.max_failure_rate
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ConfigError(f"max_failure_rate must be between 0 and 1, not {rate!r}")
        self.date_range()

    def date_range(self) -> tuple[date | None, date | None]:
        """Return (from_date, to_date) parsed; raises InvalidDateRangeError."""
        return parse_date_range(self.from_date, self.to_date)

    def to_json(self) -> dict[str, Any]:
        """Return the config as JSON-ready values (dates as ISO strings), for the ledger."""
        lo, hi = self.date_range()
        return {
            "batch_size": self.batch_size,
            "max_workers": self.max_workers,
            "dry_run": self.dry_run,
            "from_date": None if lo is None else lo.isoformat(),
            "to_date": None if hi is None else hi.isoformat(),
            "skip_backup": self.skip_backup,
            "max_failure_rate": self.max_failure_rate,
            "ignore_feature_flag": self.ignore_feature_flag,
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> BulkConfig:
        """Return the config the ledger recorded."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


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
            return _Run(storage, operation_id, config, runner, progress).execute(None)
    finally:
        ledger.release_runner(runner)


def get_rebuild_progress(storage: Storage, operation_id: str) -> Progress:
    """Return the operation's progress; a running one whose runner is gone is interrupted."""
    with read_connection(storage.engine) as conn:
        op = ledger.fetch_operation(conn, operation_id)
    return _progress_of(storage, _settle(storage, op))


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
    return [_progress_of(storage, op) for op in found]


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
        return _stored_result(storage, op)
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
                    return _stored_result(storage, op)
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
            return _Run(storage, operation_id, config, runner, progress).execute(
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


# ---------------------------------------------------------------------------- the run


class _Rollback(Exception):
    """Raised inside a batch's transaction to roll it back on purpose."""


@dataclass
class _BatchDone:
    results: list[ledger.ItemResult]
    timings: dict[str, float]


class _Run:
    """One runner's pass over an operation's pending users."""

    def __init__(
        self,
        storage: Storage,
        operation_id: str,
        config: BulkConfig,
        runner: ledger.Runner,
        progress: ProgressCallback | None,
    ) -> None:
        self.storage = storage
        self.engine = storage.engine
        self.operation_id = operation_id
        self.config = config
        self.runner = runner
        self.callback = progress
        lo, hi = config.date_range()
        dry = config.dry_run
        self.options = BatchOptions(
            operation_id,
            lo,
            hi,
            backup=BACKUP_NEVER if dry or config.skip_backup else BACKUP_CHANGED,
            backup_reason="bulk",
        )
        self.history_kind = history.PARTIAL_REBUILD if self.options.partial else history.REBUILD
        self.timings: dict[str, float] = {}
        self._timings_lock = threading.Lock()
        self.stop = threading.Event()

    # ------------------------------------------------------------ coordinator

    def execute(self, only: list[str] | None, status_if_left: str = ledger.CANCELLED) -> BulkResult:
        """Process the pending users (or only those given); record the final status."""
        t0 = time.perf_counter()
        status: str = ledger.FAILED
        error: str | None = "the runner stopped unexpectedly"
        try:
            with read_connection(self.engine) as conn:
                todo = ledger.pending_user_ids(conn, self.operation_id)
                base = ledger.item_counts(conn, self.operation_id)
            if only is not None:
                wanted = set(only)
                todo = [u for u in todo if u in wanted]
            reason = self._drive(todo, base, t0)
            with read_connection(self.engine) as conn:
                left = ledger.item_counts(conn, self.operation_id).pending
            if reason is not None and reason != "cancelled":
                status, error = ledger.FAILED, reason
            elif left == 0:
                status, error = ledger.COMPLETED, None
            else:
                status, error = (ledger.CANCELLED if reason else status_if_left), None
        except Exception as exc:
            error = f"{exc.__class__.__name__}: {mask_secrets(str(exc))}"[:_MESSAGE_CHARS]
            log.error("bulk operation %s failed: %s", self.operation_id, error)
            raise
        except BaseException:
            status, error = ledger.INTERRUPTED, "interrupted"
            raise
        finally:
            with write_transaction(self.engine) as conn:
                ledger.finish(conn, self.operation_id, self.runner, status, self.storage.now(), error)
            log.info("bulk operation %s ended %s", self.operation_id, status)
        elapsed = (time.perf_counter() - t0) * 1000
        with read_connection(self.engine) as conn:
            op = ledger.fetch_operation(conn, self.operation_id)
            return _result_from_ledger(conn, op, elapsed, dict(self.timings))

    def _drive(self, todo: list[str], base: ledger.ItemCounts, t0: float) -> str | None:
        """Run the batches; return why it stopped early ("cancelled", a failure) or None."""
        size, workers = self.config.batch_size, self.config.max_workers
        batches = iter([todo[i : i + size] for i in range(0, len(todo), size)])
        done_ok = done_failed = 0
        reason: str | None = None
        last_beat = time.perf_counter()
        self._report(base, 0, 0, len(todo), t0)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="potato-bulk")
        in_flight: set[Future[_BatchDone]] = set()
        try:
            for batch in batches:
                in_flight.add(pool.submit(self._batch, batch))
                if len(in_flight) >= workers:
                    break
            while in_flight:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    done = future.result()
                    self._add_timings(done.timings)
                    done_ok += sum(r.status == ledger.COMPLETED for r in done.results)
                    done_failed += sum(r.status == ledger.FAILED for r in done.results)
                self._report(base, done_ok, done_failed, len(todo), t0)
                if reason is None:
                    if time.perf_counter() - last_beat >= HEARTBEAT_EVERY_S:
                        self._heartbeat()
                        last_beat = time.perf_counter()
                    reason = self._why_stop(done_ok, done_failed)
                if reason is None:
                    for batch in batches:
                        in_flight.add(pool.submit(self._batch, batch))
                        if len(in_flight) >= workers:
                            break
        except BaseException:
            self.stop.set()  # batches not started yet are skipped; running ones finish
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return reason

    def _heartbeat(self) -> None:
        """Stamp the heartbeat; a miss (SQLite busy behind the workers) only waits for the next."""
        try:
            with write_transaction(self.engine) as conn:
                ledger.heartbeat(conn, self.operation_id, self.runner, self.storage.now())
        except SQLAlchemyError as exc:
            log.warning("bulk operation %s: heartbeat skipped: %s", self.operation_id, exc)

    def _why_stop(self, ok: int, failed: int) -> str | None:
        """Return a reason to stop at this batch boundary (a cancel, the failure rate), if any."""
        with read_connection(self.engine) as conn:
            cancelled = ledger.cancel_requested(conn, self.operation_id)
        if cancelled:
            log.info("bulk operation %s: cancelled, stopping at this batch boundary", self.operation_id)
            return "cancelled"
        processed = ok + failed
        limit = self.config.max_failure_rate
        if processed >= FAILURE_RATE_MIN_USERS and failed / processed > limit:
            share = failed / processed
            return f"aborted: {failed} of {processed} users failed ({share:.1%}, more than {limit:.1%})"
        return None

    def _report(self, base: ledger.ItemCounts, ok: int, failed: int, todo: int, t0: float) -> None:
        if self.callback is None:
            return
        processed = ok + failed
        elapsed = time.perf_counter() - t0
        eta = None
        if processed and elapsed > 0:
            eta = (todo - processed) / (processed / elapsed)
        now = self.storage.now()
        self.callback(
            Progress(
                operation_id=self.operation_id,
                status=ledger.RUNNING,
                processed_users=base.processed + processed,
                total_users=base.total,
                completed_users=base.completed + ok,
                failed_users=base.failed + failed,
                started_at=None,
                updated_at=now,
                eta_seconds=eta,
                kind=KIND,
                dry_run=self.config.dry_run,
            )
        )

    def _add_timings(self, timings: dict[str, float]) -> None:
        with self._timings_lock:
            for phase, ms in timings.items():
                self.timings[phase] = self.timings.get(phase, 0.0) + ms

    # ------------------------------------------------------------ workers

    def _batch(self, user_ids: list[str]) -> _BatchDone:
        """Rebuild a batch in one transaction; on any failure redo each user alone."""
        timings: dict[str, float] = {}
        if self.stop.is_set():
            return _BatchDone([], timings)
        results = self._attempt(user_ids, tries=1, timings=timings)
        if results is None:
            results = []
            for uid in user_ids:
                alone = self._attempt([uid], tries=2, timings=timings, alone=True)
                assert alone is not None
                results.extend(alone)
        return _BatchDone(results, timings)

    def _attempt(
        self, user_ids: list[str], *, tries: int, timings: dict[str, float], alone: bool = False
    ) -> list[ledger.ItemResult] | None:
        """Try the users in one transaction; return their results, or None to retry each alone.

        Alone, a failure is recorded (item failed, history row) instead of retried.
        """
        started = self.storage.now()
        t0 = time.perf_counter()
        outcomes: dict[str, UserOutcome] = {}
        found: list[str] = []
        try:
            with write_transaction(self.engine) as conn:
                users = fetch_users(conn, user_ids)
                found = [u.id for u in users]
                outcomes = rebuild_batch(conn, users, self.options, started, timings)
                good = all(o.success for o in outcomes.values())
                if self.config.dry_run or not good:
                    raise _Rollback
                results = self._results(user_ids, found, outcomes, tries, t0)
                t_rec = time.perf_counter()
                now = self.storage.now()
                history.record_history(conn, self._history(results, outcomes, started, now))
                ledger.record_items(conn, self.operation_id, results, now)
                t_commit = time.perf_counter()
                timings["ledger"] = timings.get("ledger", 0.0) + (t_commit - t_rec) * 1000
            timings["commit"] = timings.get("commit", 0.0) + (time.perf_counter() - t_commit) * 1000
            return results
        except _Rollback:
            if self.config.dry_run or alone:
                results = self._results(user_ids, found, outcomes, tries, t0)
                self._record_outside(results, outcomes, started)
                return results
            return None
        except Exception as exc:
            if not alone:
                log.info("batch of %d users rolled back (%s); redoing each alone", len(user_ids), exc)
                return None
            log.warning("user %s failed: %s: %s", user_ids[0], exc.__class__.__name__, exc)
            message = mask_secrets(str(getattr(exc, "orig", None) or exc)).strip()
            error = ledger.ItemResult(
                user_ids[0],
                ledger.FAILED,
                tries,
                duration_ms=(time.perf_counter() - t0) * 1000,
                error_class=exc.__class__.__name__,
                error_message=message.splitlines()[0][:_MESSAGE_CHARS] if message else "",
            )
            self._record_outside([error], {}, started)
            return [error]

    def _results(
        self,
        user_ids: list[str],
        found: list[str],
        outcomes: dict[str, UserOutcome],
        tries: int,
        t0: float,
    ) -> list[ledger.ItemResult]:
        share = (time.perf_counter() - t0) * 1000 / max(len(user_ids), 1)
        present = set(found)
        results: list[ledger.ItemResult] = []
        for uid in user_ids:
            if uid not in present:
                results.append(
                    ledger.ItemResult(
                        uid,
                        ledger.FAILED,
                        tries,
                        duration_ms=share,
                        error_class=UserNotFoundError.__name__,
                        error_message="no user with this id",
                    )
                )
                continue
            o = outcomes[uid]
            failure: dict[str, Any] = {}
            if not o.success:
                kinds = sorted({v.kind for v in o.violations})
                failure = {
                    "error_class": "InvariantViolation",
                    "error_message": (
                        f"{len(o.violations)} violations after rebuild ({', '.join(kinds)}): "
                        + o.violations[0].detail
                    )[:_MESSAGE_CHARS],
                }
            results.append(
                ledger.ItemResult(
                    uid,
                    ledger.COMPLETED if o.success else ledger.FAILED,
                    tries,
                    changed=o.changed,
                    runs_deleted=o.runs_deleted,
                    runs_created=o.runs_created,
                    active_flags_changed=o.active_flags_changed,
                    duration_ms=share,
                    **failure,
                )
            )
        return results

    def _history(
        self,
        results: list[ledger.ItemResult],
        outcomes: dict[str, UserOutcome],
        started: datetime,
        now: datetime,
    ) -> list[history.HistoryEntry]:
        entries = []
        for r in results:
            if r.error_class == UserNotFoundError.__name__:
                continue  # nobody to rebuild: the ledger says so
            o = outcomes.get(r.user_id)
            entries.append(
                history.HistoryEntry(
                    operation_id=self.operation_id,
                    user_id=r.user_id,
                    kind=self.history_kind,
                    started_at=started,
                    finished_at=now,
                    duration_ms=r.duration_ms,
                    success=r.status == ledger.COMPLETED,
                    runs_deleted=r.runs_deleted,
                    runs_created=r.runs_created,
                    days_processed=o.days_processed if o else 0,
                    violations=len(o.violations) if o else 0,
                    from_date=self.options.from_date,
                    to_date=self.options.to_date,
                    error=None if r.status == ledger.COMPLETED else f"{r.error_class}: {r.error_message}",
                )
            )
        return entries

    def _record_outside(
        self, results: list[ledger.ItemResult], outcomes: dict[str, UserOutcome], started: datetime
    ) -> None:
        """Record results whose rebuild was rolled back: a dry run's, or a failure's."""
        now = self.storage.now()
        with write_transaction(self.engine) as conn:
            if not self.config.dry_run:
                history.record_history(conn, self._history(results, outcomes, started, now))
            ledger.record_items(conn, self.operation_id, results, now)


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


def _eta(
    counts: ledger.ItemCounts, finishes: list[tuple[datetime, int]], started: datetime | None
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


def _progress_of(storage: Storage, op: ledger.OperationRow) -> Progress:
    with read_connection(storage.engine) as conn:
        counts = ledger.item_counts(conn, op.id)
        eta = None
        if op.status == ledger.RUNNING:
            eta = _eta(counts, ledger.recent_finishes(conn, op.id), op.started_at)
        elif op.status == ledger.COMPLETED:
            eta = 0.0
    return Progress(
        operation_id=op.id,
        status=op.status,
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
    )


def _stored_result(storage: Storage, op: ledger.OperationRow) -> BulkResult:
    """Return a finished operation's result as the ledger holds it (no work done)."""
    duration = 0.0
    if op.started_at is not None and op.finished_at is not None:
        duration = (op.finished_at - op.started_at).total_seconds() * 1000
    with read_connection(storage.engine) as conn:
        return _result_from_ledger(conn, op, duration, {})


def _result_from_ledger(
    conn: Connection, op: ledger.OperationRow, duration_ms: float, timings: dict[str, float]
) -> BulkResult:
    counts = ledger.item_counts(conn, op.id)
    errors = [
        UserError(i.user_id, i.error_class or "Error", i.error_message or "")
        for i in ledger.failed_items(conn, op.id)[:MAX_LISTED]
    ]
    changes = [
        UserChange(i.user_id, i.runs_deleted, i.runs_created, i.active_flags_changed)
        for i in ledger.changed_items(conn, op.id)[:MAX_LISTED]
    ]
    return BulkResult(
        operation_id=op.id,
        total_users=counts.total,
        completed_users=counts.completed,
        failed_users=counts.failed,
        total_duration_ms=duration_ms,
        average_duration_ms=counts.duration_ms / counts.processed if counts.processed else 0.0,
        errors=errors,
        status=op.status,
        dry_run=op.dry_run,
        users_changed=counts.changed,
        changes=changes,
        runs_deleted=counts.runs_deleted,
        runs_created=counts.runs_created,
        pending_users=counts.pending,
        error=op.error,
        timings=timings,
    )


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
