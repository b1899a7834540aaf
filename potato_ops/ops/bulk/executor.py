"""The run of a bulk operation: batches across a thread pool, coordinated between batches.

``BulkRun.execute`` takes the operation's pending users (in their stable order) in batches of
``batch_size`` to ``max_workers`` threads. Each batch runs on a connection of its own in ONE
writing transaction (``rebuild_batch``, then the history rows and the ledger items); a batch
with any failing user is rolled back and each of its users is redone alone (up to two tries),
so one bad user never fails its neighbours. Between batches the coordinator stamps the
heartbeat, reads a cancel request, checks the failure rate and reports progress. The final
status goes to the ledger whatever happens.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_secrets
from potato_ops.db import history
from potato_ops.db.engine import read_connection, write_transaction
from potato_ops.db.reads import fetch_users
from potato_ops.errors import UserNotFoundError
from potato_ops.ops.bulk import ledger, ownership, rows
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.bulk.results import BulkResult, Progress, ProgressCallback, result_from_ledger
from potato_ops.ops.database import Database, Rollback
from potato_ops.ops.rebuild import (
    BACKUP_CHANGED,
    BACKUP_NEVER,
    BatchOptions,
    UserOutcome,
    history_entry,
    rebuild_batch,
)

log = logging.getLogger("potato_ops")

KIND = "bulk_rebuild"
FAILURE_RATE_MIN_USERS = 100  # the failure rate is judged once this many users were processed
HEARTBEAT_EVERY_S = 1.0
_MESSAGE_CHARS = 500


@dataclass
class _BatchDone:
    results: list[rows.ItemResult]
    timings: dict[str, float]


class BulkRun:
    """One runner's pass over an operation's pending users."""

    def __init__(
        self,
        db: Database,
        operation_id: str,
        config: BulkConfig,
        runner: ownership.Runner,
        progress: ProgressCallback | None,
    ) -> None:
        self.db = db
        self.engine = db.engine
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

    def execute(self, only: list[str] | None, status_if_left: str = rows.CANCELLED) -> BulkResult:
        """Process the pending users (or only those given); record the final status."""
        t0 = time.perf_counter()
        status: str = rows.FAILED
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
                status, error = rows.FAILED, reason
            elif left == 0:
                status, error = rows.COMPLETED, None
            else:
                status, error = (rows.CANCELLED if reason else status_if_left), None
        except Exception as exc:
            error = f"{exc.__class__.__name__}: {mask_secrets(str(exc))}"[:_MESSAGE_CHARS]
            log.error("bulk operation %s failed: %s", self.operation_id, error)
            raise
        except BaseException:
            status, error = rows.INTERRUPTED, "interrupted"
            raise
        finally:
            with write_transaction(self.engine) as conn:
                ledger.finish(conn, self.operation_id, self.runner, status, self.db.now(), error)
            log.info("bulk operation %s ended %s", self.operation_id, status)
        elapsed = (time.perf_counter() - t0) * 1000
        with read_connection(self.engine) as conn:
            op = ledger.fetch_operation(conn, self.operation_id)
            return result_from_ledger(conn, op, elapsed, dict(self.timings))

    def _drive(self, todo: list[str], base: rows.ItemCounts, t0: float) -> str | None:
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
                    done_ok += sum(r.status == rows.COMPLETED for r in done.results)
                    done_failed += sum(r.status == rows.FAILED for r in done.results)
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
                ledger.heartbeat(conn, self.operation_id, self.runner, self.db.now())
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

    def _report(self, base: rows.ItemCounts, ok: int, failed: int, todo: int, t0: float) -> None:
        if self.callback is None:
            return
        processed = ok + failed
        elapsed = time.perf_counter() - t0
        eta = None
        if processed and elapsed > 0:
            eta = (todo - processed) / (processed / elapsed)
        now = self.db.now()
        self.callback(
            Progress(
                operation_id=self.operation_id,
                status=rows.RUNNING,
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
    ) -> list[rows.ItemResult] | None:
        """Try the users in one transaction; return their results, or None to retry each alone.

        Alone, a failure is recorded (item failed, history row) instead of retried.
        """
        started = self.db.now()
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
                    raise Rollback
                results = self._results(user_ids, found, outcomes, tries, t0)
                t_rec = time.perf_counter()
                now = self.db.now()
                history.record_history(conn, self._history(results, outcomes, started, now))
                ledger.record_items(conn, self.operation_id, results, now)
                t_commit = time.perf_counter()
                timings["ledger"] = timings.get("ledger", 0.0) + (t_commit - t_rec) * 1000
            timings["commit"] = timings.get("commit", 0.0) + (time.perf_counter() - t_commit) * 1000
            return results
        except Rollback:
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
            error = rows.ItemResult(
                user_ids[0],
                rows.FAILED,
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
    ) -> list[rows.ItemResult]:
        share = (time.perf_counter() - t0) * 1000 / max(len(user_ids), 1)
        present = set(found)
        results: list[rows.ItemResult] = []
        for uid in user_ids:
            if uid not in present:
                results.append(
                    rows.ItemResult(
                        uid,
                        rows.FAILED,
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
                rows.ItemResult(
                    uid,
                    rows.COMPLETED if o.success else rows.FAILED,
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
        results: list[rows.ItemResult],
        outcomes: dict[str, UserOutcome],
        started: datetime,
        now: datetime,
    ) -> list[history.HistoryEntry]:
        return [
            history_entry(
                self.options,
                outcomes.get(r.user_id),
                user_id=r.user_id,
                kind=self.history_kind,
                started=started,
                finished=now,
                duration_ms=r.duration_ms,
                error=None if r.status == rows.COMPLETED else f"{r.error_class}: {r.error_message}",
            )
            for r in results
            if r.error_class != UserNotFoundError.__name__  # nobody to rebuild: the ledger says so
        ]

    def _record_outside(
        self, results: list[rows.ItemResult], outcomes: dict[str, UserOutcome], started: datetime
    ) -> None:
        """Record results whose rebuild was rolled back: a dry run's, or a failure's."""
        now = self.db.now()
        with write_transaction(self.engine) as conn:
            if not self.config.dry_run:
                history.record_history(conn, self._history(results, outcomes, started, now))
            ledger.record_items(conn, self.operation_id, results, now)
