"""The bulk executor: worker threads claim batches from the ledger and run each.

``BulkExecutor.execute`` starts ``max_workers`` threads; each claims the operation's next free
batch (``db.claims``: a lease, shared with every other worker of the operation, on this host or
another) and hands it to the ``batch.BatchWorker``, which rebuilds it in one transaction behind
the fence (this worker still holds the operation's epoch and the batch's claim) and redoes
each user alone when the batch fails. Between batches the coordinator stamps the heartbeat,
checks the failure rate and reports progress counted over every worker; a cancel request
stops every worker at its next claim. The owner records the final status whatever happens; a
worker fenced out by a takeover stops and writes nothing more.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.db import claims, ledger
from potato_ops.db.engine import read_connection, write_transaction
from potato_ops.domain import operations
from potato_ops.domain.operations import Owner
from potato_ops.ops.batch_rebuild import (
    BACKUP_CHANGED,
    BACKUP_NEVER,
    BatchOptions,
)
from potato_ops.ops.bulk import catchup, retry
from potato_ops.ops.bulk.batch import BatchDone, BatchWorker
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.bulk.results import (
    BulkResult,
    Progress,
    ProgressCallback,
    result_from_ledger,
    waiting_fields,
)
from potato_ops.ops.bulk.statistics import StatisticsWatch
from potato_ops.ops.bulk.throttle import Gate, RunnerId
from potato_ops.ops.database import Database

log = logging.getLogger("potato_ops")

KIND = "bulk_rebuild"
FAILURE_RATE_MIN_USERS = 100  # the failure rate is judged once this many users were processed
HEARTBEAT_EVERY_S = 1.0
COUNT_EVERY = 20  # the ledger's counts are refreshed at most once per 20 times their own cost
WAIT_FOR_OTHERS_S = 0.5  # how often a worker with nothing to claim looks again
FENCED = "fenced"  # why a run stopped: it lost the operation (a takeover); it writes nothing more


class BulkExecutor:
    """One worker's pass over an operation: its threads claim batches until none is left.

    The owner (the process that started or resumed the operation) records the final status;
    a joined worker (``join``, on any host) only stops, unless it is the one that finds the
    operation finished.
    """

    def __init__(
        self,
        db: Database,
        operation_id: str,
        config: BulkConfig,
        worker: Owner,
        progress: ProgressCallback | None,
        *,
        epoch: int = 0,
        owner: bool = True,
    ) -> None:
        self.db = db
        self.engine = db.engine
        self.operation_id = operation_id
        self.config = config
        self.worker = worker
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
        self.stop = threading.Event()
        self.batches = BatchWorker(db, operation_id, config, worker, epoch, self.options, self.stop)
        # Before each claim a worker passes the gate (pause, window, standby lag, load).
        self.gate = Gate(db, operation_id, config, RunnerId(worker.token, worker.host, worker.pid), epoch)
        self.timings: dict[str, float] = {}
        self._timings_lock = threading.Lock()
        self._done: queue.Queue[BatchDone | None] = queue.Queue()
        self._stop_reason: str | None = None
        self._errors: list[BaseException] = []
        self._counts_lock = threading.Lock()
        self._coordinator_gone = threading.Event()
        self._base = operations.ItemCounts()
        self._ok = self._failed = 0  # users this run processed since _base was read
        self._start_processed: int | None = None
        self._processed_here = 0  # users this run processed (its own rate's base)
        self.caught_up = 0  # users this run's catch-up rebuilt again

    # ------------------------------------------------------------ coordinator

    def execute(self, only: list[str] | None, status_if_left: str = operations.CANCELLED) -> BulkResult:
        """Process the pending users (or only those given); record the final status."""
        t0 = time.perf_counter()
        status: str = operations.FAILED
        reason: str | None = None
        error: str | None = "the runner stopped unexpectedly"
        self.batches.only = None if only is None else set(only)
        try:
            with read_connection(self.engine) as conn:
                base = ledger.item_counts(conn, self.operation_id)
            reason = self._drive(base, t0)
            with read_connection(self.engine) as conn:
                left = ledger.item_counts(conn, self.operation_id).pending
            if reason is None and left == 0 and not self.config.dry_run:
                reason = self._catch_up(t0)
            if reason == FENCED:
                status, error = FENCED, None
            elif reason is not None and reason != "cancelled":
                status, error = operations.FAILED, reason
            elif left == 0:
                status, error = operations.COMPLETED, None
            else:
                status, error = (operations.CANCELLED if reason else status_if_left), None
        except Exception as exc:
            error = retry.one_line(exc)  # one line: never the SQL or its parameters
            log.error("bulk operation %s failed: %s", self.operation_id, error)
            raise
        except BaseException:
            status, error = operations.INTERRUPTED, "interrupted"
            raise
        finally:
            self.gate.close()
            self._record_end(status, error)
        elapsed = (time.perf_counter() - t0) * 1000
        with read_connection(self.engine) as conn:
            op = ledger.fetch_operation(conn, self.operation_id)
            result = result_from_ledger(conn, op, elapsed, dict(self.timings))
        return dataclasses.replace(result, processed_here=self._processed_here, taken_over=reason == FENCED)

    def _catch_up(self, t0: float) -> str | None:
        """Rebuild again the users whose marks changed after their batch (``catchup``)."""
        target = catchup.Target(
            self.db,
            self.operation_id,
            self.options,
            self.batches.history_kind,
            self.config.batch_size,
            self.epoch,
        )

        def on_batch(caught_up: int) -> None:
            self.caught_up = caught_up
            self._report(t0)

        report = catchup.catch_up(target, on_batch, lambda: self.gate.wait_until_open(self.stop))
        self._add_timings({"catchup": report.ms})
        return FENCED if report.fenced else None

    def _record_end(self, status: str, error: str | None) -> None:
        """Write the final status: the owner always, a joined worker only a completion or cancel."""
        if status == FENCED:
            log.warning("bulk operation %s: this runner lost the operation and stopped", self.operation_id)
            return
        if not self.owner and status not in (operations.COMPLETED, operations.CANCELLED):
            return
        with write_transaction(self.engine) as conn:
            ledger.finish(
                conn,
                self.operation_id,
                None if not self.owner else self.worker,
                status,
                self.db.now(),
                error,
                epoch=self.epoch,
            )
        log.info("bulk operation %s ended %s", self.operation_id, status)

    def _drive(self, base: operations.ItemCounts, t0: float) -> str | None:
        """Run the worker threads; return why they stopped early (cancelled, fenced, a failure)."""
        self._base = base
        last_beat = last_count = time.perf_counter()
        count_s = 0.0
        stats = StatisticsWatch(self.engine, dry_run=self.config.dry_run)
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
                try:
                    done = self._done.get(timeout=HEARTBEAT_EVERY_S)
                except queue.Empty:  # the workers wait at the gate (or run long batches)
                    self._heartbeat()
                    self._report(t0)
                    last_beat = time.perf_counter()
                    continue
                if done is None:  # a thread ended
                    running -= 1
                    continue
                self._add_timings(done.timings)
                if time.perf_counter() - last_beat >= HEARTBEAT_EVERY_S:
                    self._heartbeat()
                    last_beat = time.perf_counter()
                # Counting every worker's items (the ledger's tallies, a few rows per batch):
                # spaced so that counting takes at most 1/COUNT_EVERY of the run.
                if time.perf_counter() - last_count >= max(HEARTBEAT_EVERY_S, count_s * COUNT_EVERY):
                    t_count = time.perf_counter()
                    retry.run_with_retry(self._refresh_base, "reading the counts", self.stop)
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

    def _account(self, done: BatchDone) -> None:
        """Count a batch's outcome; stop every thread once too many users failed."""
        with self._counts_lock:
            self._processed_here += len(done.results)
            self._ok += sum(r.status == operations.COMPLETED for r in done.results)
            self._failed += sum(r.status == operations.FAILED for r in done.results)
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
                if not self.gate.wait_until_open(self.stop):
                    return
                claim = retry.run_with_retry(self._claim, "claiming a batch", self.stop)
                if isinstance(claim, claims.NoClaim):
                    if claim.reason == claims.DONE:
                        return
                    if claim.reason == "busy":  # the rest is claimed by others: wait for them
                        self.stop.wait(WAIT_FOR_OTHERS_S)
                        continue
                    if claim.reason == claims.PAUSED:  # asked between the gate and the claim
                        continue
                    if claim.reason == "cancelled":
                        log.info(
                            "bulk operation %s: cancelled, stopping at this batch boundary", self.operation_id
                        )
                    self._halt(FENCED if claim.reason == "fenced" else claim.reason)
                    return
                try:
                    batch = functools.partial(self.batches.run, claim)
                    done = retry.run_with_retry(batch, f"batch {claim.batch_no}", self.stop)
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

    def _claim(self) -> claims.Claim | claims.NoClaim:
        with write_transaction(self.engine) as conn:
            return claims.claim_batch(
                conn, self.operation_id, self.config.claim_size, self.worker, self.epoch, self.db.now()
            )

    def _heartbeat(self) -> None:
        """Stamp the heartbeat; a miss (SQLite busy behind the workers) only waits for the next."""
        if not self.owner:
            return
        try:
            with write_transaction(self.engine) as conn:
                ledger.heartbeat(conn, self.operation_id, self.worker, self.db.now())
        except SQLAlchemyError as exc:
            log.warning("bulk operation %s: heartbeat skipped: %s", self.operation_id, exc)

    def _failure_rate(self, base: operations.ItemCounts, ok: int, failed: int) -> str | None:
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
                status=operations.RUNNING,
                processed_users=processed,
                total_users=base.total,
                completed_users=base.completed + ok,
                failed_users=base.failed + failed,
                started_at=None,
                updated_at=self.db.now(),
                eta_seconds=eta,
                kind=KIND,
                dry_run=self.config.dry_run,
                caught_up_users=self.caught_up,
                **waiting_fields(self.gate.current),
            )
        )

    def _add_timings(self, timings: dict[str, float]) -> None:
        with self._timings_lock:
            for phase, ms in timings.items():
                self.timings[phase] = self.timings.get(phase, 0.0) + ms
