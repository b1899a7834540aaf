"""The run of a bulk operation: worker threads claim batches from the ledger and run each.

``BulkRun.execute`` starts ``max_workers`` threads; each claims the operation's next free
batch (``claims``: a lease, shared with every other worker of the operation, on this host or
another), rebuilds its pending users in ONE writing transaction (``fill.rebuild_bulk_batch``, then the
history rows and the ledger items) and commits it only behind the fence (this worker still
holds the operation's epoch and the batch's claim). A batch with any failing user is rolled
back and each of its users is redone alone (up to two tries), so one bad user never fails its
neighbours. Between batches the coordinator stamps the heartbeat, checks the failure rate and
reports progress counted over every worker; a cancel request stops every worker at its next
claim. The owner records the final status whatever happens; a runner fenced out by a takeover
stops and writes nothing more.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_secrets
from potato_ops.db import history
from potato_ops.db.engine import read_connection, write_transaction
from potato_ops.db.reads import fetch_users
from potato_ops.errors import UserNotFoundError
from potato_ops.ops.bulk import claims, ledger, ownership, rows
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.bulk.fill import rebuild_bulk_batch
from potato_ops.ops.bulk.results import BulkResult, Progress, ProgressCallback, result_from_ledger
from potato_ops.ops.bulk.statistics import StatisticsWatch
from potato_ops.ops.database import Database, Rollback
from potato_ops.ops.rebuild import (
    BACKUP_CHANGED,
    BACKUP_NEVER,
    BatchOptions,
    UserOutcome,
    history_entry,
)

log = logging.getLogger("potato_ops")

KIND = "bulk_rebuild"
FAILURE_RATE_MIN_USERS = 100  # the failure rate is judged once this many users were processed
HEARTBEAT_EVERY_S = 1.0
COUNT_EVERY = 20  # the ledger's counts are refreshed at most once per 20 times their own cost
WAIT_FOR_OTHERS_S = 0.5  # how often a worker with nothing to claim looks again
FENCED = "fenced"  # why a run stopped: it lost the operation (a takeover); it writes nothing more
_MESSAGE_CHARS = 500


@dataclass
class _BatchDone:
    results: list[rows.ItemResult]
    timings: dict[str, float]
    handled: threading.Event = field(default_factory=threading.Event)


class BulkRun:
    """One worker's pass over an operation: its threads claim batches until none is left.

    The owner (the runner that started or resumed the operation) records the final status;
    a joined worker (``join``, on any host) only stops, unless it is the one that finds the
    operation finished.
    """

    def __init__(
        self,
        db: Database,
        operation_id: str,
        config: BulkConfig,
        runner: ownership.Runner,
        progress: ProgressCallback | None,
        *,
        epoch: int = 0,
        owner: bool = True,
    ) -> None:
        self.db = db
        self.engine = db.engine
        self.operation_id = operation_id
        self.config = config
        self.runner = runner
        self.callback = progress
        self.epoch = epoch
        self.owner = owner
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
        self._done: queue.Queue[_BatchDone | None] = queue.Queue()
        self._stop_reason: str | None = None
        self._errors: list[BaseException] = []
        self._only: set[str] | None = None
        self._counts_lock = threading.Lock()
        self._coordinator_gone = threading.Event()
        self._base = rows.ItemCounts()
        self._ok = self._failed = 0  # users this run processed since _base was read
        self._start_processed: int | None = None

    # ------------------------------------------------------------ coordinator

    def execute(self, only: list[str] | None, status_if_left: str = rows.CANCELLED) -> BulkResult:
        """Process the pending users (or only those given); record the final status."""
        t0 = time.perf_counter()
        status: str = rows.FAILED
        error: str | None = "the runner stopped unexpectedly"
        self._only = None if only is None else set(only)
        try:
            with read_connection(self.engine) as conn:
                base = ledger.item_counts(conn, self.operation_id)
            reason = self._drive(base, t0)
            with read_connection(self.engine) as conn:
                left = ledger.item_counts(conn, self.operation_id).pending
            if reason == FENCED:
                status, error = FENCED, None
            elif reason is not None and reason != "cancelled":
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
            self._record_end(status, error)
        elapsed = (time.perf_counter() - t0) * 1000
        with read_connection(self.engine) as conn:
            op = ledger.fetch_operation(conn, self.operation_id)
            return result_from_ledger(conn, op, elapsed, dict(self.timings))

    def _record_end(self, status: str, error: str | None) -> None:
        """Write the final status: the owner always, a joined worker only a completion or cancel."""
        if status == FENCED:
            log.warning("bulk operation %s: this runner lost the operation and stopped", self.operation_id)
            return
        if not self.owner and status not in (rows.COMPLETED, rows.CANCELLED):
            return
        with write_transaction(self.engine) as conn:
            ledger.finish(
                conn,
                self.operation_id,
                None if not self.owner else self.runner,
                status,
                self.db.now(),
                error,
                epoch=self.epoch,
            )
        log.info("bulk operation %s ended %s", self.operation_id, status)

    def _drive(self, base: rows.ItemCounts, t0: float) -> str | None:
        """Run the worker threads; return why they stopped early (cancelled, fenced, a failure)."""
        self._base = base
        last_beat = last_count = time.perf_counter()
        count_s = 0.0
        stats = StatisticsWatch(self.engine)
        self._report(t0)
        threads = [
            threading.Thread(target=self._work, name=f"potato-bulk-{i}", daemon=True)
            for i in range(self.config.max_workers)
        ]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                done = self._done.get()
                if done is None:  # a thread ended
                    running -= 1
                    continue
                self._add_timings(done.timings)
                if time.perf_counter() - last_beat >= HEARTBEAT_EVERY_S:
                    self._heartbeat()
                    last_beat = time.perf_counter()
                # Counting every worker's items reads the operation's whole ledger: spaced so
                # that counting takes at most 1/COUNT_EVERY of the run, whatever its size.
                if time.perf_counter() - last_count >= max(HEARTBEAT_EVERY_S, count_s * COUNT_EVERY):
                    t_count = time.perf_counter()
                    self._refresh_base()
                    last_count = time.perf_counter()
                    count_s = last_count - t_count
                self._report(t0)
                done.handled.set()
                stats.due()  # after the batch is handed back: the workers go on meanwhile
        except BaseException:
            self.stop.set()  # threads finish the batch they are in, then end
            self._coordinator_gone.set()
            raise
        finally:
            for thread in threads:
                thread.join()
        if self._errors:
            raise self._errors[0]
        return self._stop_reason

    def _account(self, done: _BatchDone) -> None:
        """Count a batch's outcome; stop every thread once too many users failed."""
        with self._counts_lock:
            self._ok += sum(r.status == rows.COMPLETED for r in done.results)
            self._failed += sum(r.status == rows.FAILED for r in done.results)
            reason = self._failure_rate(self._base, self._ok, self._failed)
        if reason is not None:
            self._halt(reason)

    def _refresh_base(self) -> None:
        """Take the ledger's counts (every worker's share) as the new base of this run's counts."""
        with read_connection(self.engine) as conn:
            fresh = ledger.item_counts(conn, self.operation_id)
        with self._counts_lock:
            self._base, self._ok, self._failed = fresh, 0, 0

    def _halt(self, reason: str) -> None:
        """Stop every thread at its next batch boundary, for this reason (the first one kept)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.stop.set()

    def _work(self) -> None:
        """Claim and run batches until none is left, the run stops, or an error."""
        try:
            while not self.stop.is_set():
                with write_transaction(self.engine) as conn:
                    claim = claims.claim_batch(
                        conn,
                        self.operation_id,
                        self.config.batch_size,
                        self.runner,
                        self.epoch,
                        self.db.now(),
                    )
                if isinstance(claim, claims.NoClaim):
                    if claim.reason == claims.DONE:
                        return
                    if claim.reason == "busy":  # the rest is claimed by others: wait for them
                        self.stop.wait(WAIT_FOR_OTHERS_S)
                        continue
                    if claim.reason == "cancelled":
                        log.info(
                            "bulk operation %s: cancelled, stopping at this batch boundary", self.operation_id
                        )
                    self._halt(FENCED if claim.reason == "fenced" else claim.reason)
                    return
                try:
                    done = self._batch(claim)
                    self._account(done)
                    self._done.put(done)
                    # The next claim waits until the coordinator reported this batch: a cancel
                    # or stop asked for from the progress callback lands at this boundary.
                    while not done.handled.wait(0.2) and not self._coordinator_gone.is_set():
                        pass
                except claims.Fenced as exc:
                    log.warning("bulk operation %s: %s (batch rolled back)", self.operation_id, exc)
                    if exc.operation_lost:
                        self._halt(FENCED)
                        return
        except BaseException as exc:
            self._errors.append(exc)
            self.stop.set()
        finally:
            self._done.put(None)

    def _heartbeat(self) -> None:
        """Stamp the heartbeat; a miss (SQLite busy behind the workers) only waits for the next."""
        if not self.owner:
            return
        try:
            with write_transaction(self.engine) as conn:
                ledger.heartbeat(conn, self.operation_id, self.runner, self.db.now())
        except SQLAlchemyError as exc:
            log.warning("bulk operation %s: heartbeat skipped: %s", self.operation_id, exc)

    def _failure_rate(self, base: rows.ItemCounts, ok: int, failed: int) -> str | None:
        """Return a reason to stop when too many users failed (judged over the whole operation)."""
        failed += base.failed
        processed = ok + failed + base.completed
        limit = self.config.max_failure_rate
        if processed >= FAILURE_RATE_MIN_USERS and failed / processed > limit:
            share = failed / processed
            return f"aborted: {failed} of {processed} users failed ({share:.1%}, more than {limit:.1%})"
        return None

    def _report(self, t0: float) -> None:
        if self.callback is None:
            return
        with self._counts_lock:
            base, ok, failed = self._base, self._ok, self._failed
        processed = base.processed + ok + failed
        if self._start_processed is None:
            self._start_processed = processed
        elapsed = time.perf_counter() - t0
        done_here = processed - self._start_processed  # every worker's, since this run began
        eta = None
        if done_here > 0 and elapsed > 0:
            eta = (base.total - processed) / (done_here / elapsed)
        self.callback(
            Progress(
                operation_id=self.operation_id,
                status=rows.RUNNING,
                processed_users=processed,
                total_users=base.total,
                completed_users=base.completed + ok,
                failed_users=base.failed + failed,
                started_at=None,
                updated_at=self.db.now(),
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

    def _batch(self, claim: claims.Claim) -> _BatchDone:
        """Rebuild a claimed batch in one transaction; on any failure redo each user alone."""
        timings: dict[str, float] = {}
        with read_connection(self.engine) as conn:
            user_ids = claims.batch_user_ids(conn, self.operation_id, claim)
        if self._only is not None:
            user_ids = [u for u in user_ids if u in self._only]
        results: list[rows.ItemResult] | None = []
        if user_ids:
            results = self._attempt(user_ids, claim, tries=1, timings=timings)
        if results is None:
            results = []
            for uid in user_ids:
                alone = self._attempt([uid], claim, tries=2, timings=timings, alone=True)
                assert alone is not None
                results.extend(alone)
        if not user_ids or not results or results[0].tries == 2 or self.config.dry_run:
            with write_transaction(self.engine) as conn:  # the batch's own commit did not close it
                claims.fence(conn, self.operation_id, claim, self.runner, self.epoch)
                claims.close_batch(conn, self.operation_id, claim, self.db.now())
        return _BatchDone(results, timings)

    def _attempt(
        self,
        user_ids: list[str],
        claim: claims.Claim,
        *,
        tries: int,
        timings: dict[str, float],
        alone: bool = False,
    ) -> list[rows.ItemResult] | None:
        """Try the users in one transaction; return their results, or None to retry each alone.

        Alone, a failure is recorded (item failed, history row) instead of retried. A batch
        commits only behind the fence (this worker still holds the operation and the claim).
        """
        started = self.db.now()
        t0 = time.perf_counter()
        outcomes: dict[str, UserOutcome] = {}
        found: list[str] = []
        try:
            with write_transaction(self.engine) as conn:
                users = fetch_users(conn, user_ids)
                found = [u.id for u in users]
                outcomes = rebuild_bulk_batch(conn, users, self.options, started, timings)
                good = all(o.success for o in outcomes.values())
                if self.config.dry_run or not good:
                    raise Rollback
                results = self._results(user_ids, found, outcomes, tries, t0)
                t_rec = time.perf_counter()
                now = self.db.now()
                history.record_history(conn, self._history(results, outcomes, started, now))
                ledger.record_items(conn, self.operation_id, results, now)
                claims.fence(conn, self.operation_id, claim, self.runner, self.epoch)
                if not alone:
                    claims.close_batch(conn, self.operation_id, claim, now)
                t_commit = time.perf_counter()
                timings["ledger"] = timings.get("ledger", 0.0) + (t_commit - t_rec) * 1000
            timings["commit"] = timings.get("commit", 0.0) + (time.perf_counter() - t_commit) * 1000
            return results
        except claims.Fenced:
            raise
        except Rollback:
            if self.config.dry_run or alone:
                results = self._results(user_ids, found, outcomes, tries, t0)
                self._record_outside(results, outcomes, started, claim)
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
            self._record_outside([error], {}, started, claim)
            return [error]

    def _results(
        self,
        user_ids: list[str],
        found: list[str],
        outcomes: dict[str, UserOutcome],
        tries: int,
        t0: float,
    ) -> list[rows.ItemResult]:
        # A user's duration is its own work (expected runs, diff, checks, timed one by one) plus
        # an equal share of the batch's set-based statements, which serve every user at once.
        present = set(found)
        elapsed = (time.perf_counter() - t0) * 1000
        own = {uid: outcomes[uid].own_ms for uid in user_ids if uid in present and uid in outcomes}
        share = max(elapsed - sum(own.values()), 0.0) / max(len(user_ids), 1)
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
                    duration_ms=share + o.own_ms,
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
        self,
        results: list[rows.ItemResult],
        outcomes: dict[str, UserOutcome],
        started: datetime,
        claim: claims.Claim,
    ) -> None:
        """Record results whose rebuild was rolled back: a dry run's, or a failure's (fenced too)."""
        now = self.db.now()
        with write_transaction(self.engine) as conn:
            claims.fence(conn, self.operation_id, claim, self.runner, self.epoch)
            if not self.config.dry_run:
                history.record_history(conn, self._history(results, outcomes, started, now))
            ledger.record_items(conn, self.operation_id, results, now)
