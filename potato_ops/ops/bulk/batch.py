"""One claimed batch of a bulk operation, rebuilt in one transaction by a worker thread.

``BatchWorker.run`` reads the batch's pending users, rebuilds them in ONE writing transaction
(``fill.rebuild_bulk_batch``, then the history rows and the ledger items) and commits only
behind the fence (this worker still holds the operation's epoch and the batch's claim). A batch
with any failing user is rolled back and each of its users is redone alone (up to two tries),
so one bad user never fails its neighbours. The ``executor`` runs the threads that call it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from potato_ops.config import mask_secrets
from potato_ops.db import claims, history, ledger
from potato_ops.db.engine import batch_statements, read_connection, write_transaction
from potato_ops.db.reads import fetch_users
from potato_ops.domain import operations
from potato_ops.domain.operations import Owner
from potato_ops.errors import UserNotFoundError
from potato_ops.ops.batch_rebuild import BatchOptions, UserOutcome, history_entry
from potato_ops.ops.bulk import catchup, retry
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.bulk.fill import rebuild_bulk_batch
from potato_ops.ops.bulk.sizing import BatchSizer
from potato_ops.ops.database import Database, Rollback

log = logging.getLogger("potato_ops")

MESSAGE_CHARS = 500  # an error message kept in the ledger is cut to this length


@dataclass
class BatchDone:
    """A batch's results and phase timings; ``handled`` is set once the coordinator counted it."""

    results: list[operations.ItemResult]
    timings: dict[str, float]
    handled: threading.Event = field(default_factory=threading.Event)


class BatchWorker:
    """Rebuilds claimed batches of one operation for one worker (shared by its threads)."""

    def __init__(
        self,
        db: Database,
        operation_id: str,
        config: BulkConfig,
        worker: Owner,
        epoch: int,
        options: BatchOptions,
        stop: threading.Event | None = None,
    ) -> None:
        self.db = db
        self.engine = db.engine
        self.operation_id = operation_id
        self.config = config
        self.worker = worker
        self.epoch = epoch
        self.options = options
        self.history_kind = history.PARTIAL_REBUILD if options.partial else history.REBUILD
        self.only: set[str] | None = None  # with ``execute(only=...)``: the users to process
        self.stop = stop or threading.Event()  # set: the run stops (a rest ends at once)
        self.sizer: BatchSizer | None = None  # with ``batch_seconds``: users per transaction adapt
        if config.batch_seconds is not None:
            smallest, largest = config.batch_bounds
            self.sizer = BatchSizer(config.batch_size, smallest, largest, config.batch_seconds)

    def run(self, claim: claims.Claim) -> BatchDone:
        """Rebuild a claimed batch in one transaction; on any failure redo each user alone.

        With ``batch_seconds`` the batch goes in several transactions, each of the sizer's
        size; with ``nice_ratio`` each transaction is followed by a rest that many times its
        length.
        """
        timings: dict[str, float] = {}
        with read_connection(self.engine) as conn:
            user_ids = claims.batch_user_ids(conn, self.operation_id, claim)
        if self.only is not None:
            user_ids = [u for u in user_ids if u in self.only]
        results: list[operations.ItemResult] = []
        closed = False
        start = 0
        while start < len(user_ids):  # one transaction per chunk (the whole batch unless sizes adapt)
            size = len(user_ids) if self.sizer is None else self.sizer.size
            chunk = user_ids[start : start + size]
            start += len(chunk)
            t0 = time.perf_counter()
            done = self._attempt(chunk, claim, tries=1, timings=timings, close=start >= len(user_ids))
            if done is None:
                done = []
                for uid in chunk:
                    alone = self._attempt([uid], claim, tries=2, timings=timings, alone=True)
                    assert alone is not None
                    done.extend(alone)
            else:
                closed = start >= len(user_ids) and not self.config.dry_run
            seconds = time.perf_counter() - t0
            results.extend(done)
            if self.sizer is not None:
                self.sizer.observe(len(chunk), seconds)
            if self.config.nice_ratio:  # gh-ost's nice ratio: rest a share of the work's time
                self.stop.wait(self.config.nice_ratio * seconds)
        if not closed:
            with write_transaction(self.engine) as conn:  # the batch's own commit did not close it
                claims.fence(conn, self.operation_id, claim, self.worker, self.epoch)
                claims.close_batch(conn, self.operation_id, claim, self.db.now())
        return BatchDone(results, timings)

    def _attempt(
        self,
        user_ids: list[str],
        claim: claims.Claim,
        *,
        tries: int,
        timings: dict[str, float],
        alone: bool = False,
        close: bool = True,
    ) -> list[operations.ItemResult] | None:
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
                batch_statements(conn)
                users = fetch_users(conn, user_ids)
                found = [u.id for u in users]
                seen = catchup.note_positions(conn, found, dry_run=self.config.dry_run)
                outcomes = rebuild_bulk_batch(conn, users, self.options, started, timings)
                good = all(o.success for o in outcomes.values())
                if self.config.dry_run or not good:
                    raise Rollback
                results = self._results(user_ids, found, outcomes, tries, t0)
                t_rec = time.perf_counter()
                now = self.db.now()
                history.record_history(conn, self._history(results, outcomes, started, now))
                counted = ledger.record_items(conn, self.operation_id, results, now)
                catchup.record_positions(conn, self.operation_id, seen, dry_run=self.config.dry_run)
                claims.fence(conn, self.operation_id, claim, self.worker, self.epoch)
                if close and not alone:
                    claims.close_batch(conn, self.operation_id, claim, now)
                # Last, after the fence: the batch's tally rows are locked only for the commit.
                ledger.add_tally_change(conn, self.operation_id, counted, slot=claim.batch_no)
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
            retry.reraise_if_connection_lost(exc)  # the whole batch is run again
            if not alone:
                log.info("batch of %d users rolled back (%s); redoing each alone", len(user_ids), exc)
                return None
            log.warning("user %s failed: %s: %s", user_ids[0], exc.__class__.__name__, exc)
            message = mask_secrets(str(getattr(exc, "orig", None) or exc)).strip()
            error = operations.ItemResult(
                user_ids[0],
                operations.FAILED,
                tries,
                duration_ms=(time.perf_counter() - t0) * 1000,
                error_class=exc.__class__.__name__,
                error_message=message.splitlines()[0][:MESSAGE_CHARS] if message else "",
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
    ) -> list[operations.ItemResult]:
        # A user's duration is its own work (expected runs, diff, checks, timed one by one) plus
        # an equal share of the batch's set-based statements, which serve every user at once.
        present = set(found)
        elapsed = (time.perf_counter() - t0) * 1000
        own = {uid: outcomes[uid].own_ms for uid in user_ids if uid in present and uid in outcomes}
        share = max(elapsed - sum(own.values()), 0.0) / max(len(user_ids), 1)
        results: list[operations.ItemResult] = []
        for uid in user_ids:
            if uid not in present:
                results.append(
                    operations.ItemResult(
                        uid,
                        operations.FAILED,
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
                    )[:MESSAGE_CHARS],
                }
            results.append(
                operations.ItemResult(
                    uid,
                    operations.COMPLETED if o.success else operations.FAILED,
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
        results: list[operations.ItemResult],
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
                error=None if r.status == operations.COMPLETED else f"{r.error_class}: {r.error_message}",
            )
            for r in results
            if r.error_class != UserNotFoundError.__name__  # nobody to rebuild: the ledger says so
        ]

    def _record_outside(
        self,
        results: list[operations.ItemResult],
        outcomes: dict[str, UserOutcome],
        started: datetime,
        claim: claims.Claim,
    ) -> None:
        """Record results whose rebuild was rolled back: a dry run's, or a failure's (fenced too)."""
        now = self.db.now()
        with write_transaction(self.engine) as conn:
            claims.fence(conn, self.operation_id, claim, self.worker, self.epoch)
            if not self.config.dry_run:
                history.record_history(conn, self._history(results, outcomes, started, now))
            counted = ledger.record_items(conn, self.operation_id, results, now)
            ledger.add_tally_change(conn, self.operation_id, counted, slot=claim.batch_no)
