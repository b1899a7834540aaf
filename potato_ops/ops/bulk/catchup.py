"""Catch-up: users whose marks changed after their batch read them are rebuilt again.

The app keeps writing marks while a bulk operation runs. Each batch notes, under its users'
locks and before it reads their marks, every user's capture position (``db.capture``), and
commits it with the rebuild (``note_positions`` / ``record_positions``). Before the operation
may complete, catch-up passes look for the completed users whose position moved since (a
change committed after their rebuild read the marks) and rebuild them again, in batches under
the same locks and fence as a batch (the operation's epoch, still running), noting their new
positions. A pass that finds nobody ends it. Under continuous writes it stops after
``MAX_PASSES`` passes (or at a cancel request): the changes a last look still finds are
recorded in the ledger as after the final pass, the app's own to maintain, and the operation
completes. A dry run takes no part: it notes nothing and catches nothing up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection

from potato_ops.config import mask_secrets
from potato_ops.db import capture, claims, history, ledger
from potato_ops.db.capture import MarkChange
from potato_ops.db.engine import batch_statements, chunks, lock_users, read_connection, write_transaction
from potato_ops.db.reads import fetch_users
from potato_ops.domain import operations
from potato_ops.ops.batch_rebuild import BatchOptions, UserOutcome, history_entry
from potato_ops.ops.bulk.fill import rebuild_bulk_batch
from potato_ops.ops.database import Database, Rollback

log = logging.getLogger("potato_ops")

MAX_PASSES = 5  # under writes that never stop, the operation still ends
_MESSAGE_CHARS = 500


def note_positions(conn: Connection, user_ids: Sequence[str], *, dry_run: bool) -> dict[str, int]:
    """Lock the users and return their capture positions: call before the batch reads marks."""
    if dry_run or not user_ids:
        return {}
    lock_users(conn, user_ids)  # taken again by the rebuild: a no-op then
    return capture.positions(conn, user_ids)


def record_positions(conn: Connection, operation_id: str, seen: dict[str, int], *, dry_run: bool) -> None:
    """Commit, with the batch, the positions its rebuild read under (nothing for a dry run)."""
    if not dry_run:
        capture.record_seen(conn, operation_id, seen)


@dataclass(frozen=True)
class Target:
    """The operation being caught up, and how its batches rebuild."""

    db: Database
    operation_id: str
    options: BatchOptions
    history_kind: str
    batch_size: int
    epoch: int


@dataclass
class Report:
    """What catch-up did in this run."""

    passes: int = 0
    caught_up: int = 0  # users rebuilt again (a user caught up twice counts once per pass)
    late: list[MarkChange] = field(default_factory=list)
    fenced: bool = False
    ms: float = 0.0


def catch_up(
    target: Target,
    on_batch: Callable[[int], None] | None = None,
    before_batch: Callable[[], bool] | None = None,
) -> Report:
    """Run catch-up passes until one finds nothing (or the bound); return what was done.

    ``before_batch`` is the operation's gate (throttle, window, pause): it blocks until a
    batch may run, and returns False when the run is stopping (what is left is then recorded
    as after the final pass). ``on_batch`` receives the users caught up so far after each
    batch. A runner fenced out (a takeover, or another worker ended the operation) stops at
    once with ``fenced`` set.
    """
    t0 = time.perf_counter()
    report = Report()
    db, op = target.db, target.operation_id
    try:
        while True:
            with read_connection(db.engine) as conn:
                changed = capture.changed_after_rebuild(conn, op)
                cancelled = ledger.cancel_requested(conn, op)
            if not changed:
                break
            if report.passes >= MAX_PASSES or cancelled or not (before_batch is None or before_batch()):
                with write_transaction(db.engine) as conn:
                    capture.record_late(conn, op, changed)
                    claims.fence_operation(conn, op, target.epoch)
                report.late = changed
                log.warning(
                    "bulk operation %s: %d users changed after the final catch-up pass "
                    "(recorded in the ledger; the app's to maintain)",
                    op,
                    len(changed),
                )
                break
            report.passes += 1
            log.info("bulk operation %s: catch-up pass %d, %d users", op, report.passes, len(changed))
            for k, part in enumerate(chunks([c.user_id for c in changed], target.batch_size)):
                if k and before_batch is not None and not before_batch():
                    break  # stopping: the next look records what is left as after the final pass
                report.caught_up += _rebuild(target, list(part))
                if on_batch is not None:
                    on_batch(report.caught_up)
    except claims.Fenced as exc:
        log.warning("bulk operation %s: %s (catch-up rolled back)", op, exc)
        report.fenced = True
    report.ms = (time.perf_counter() - t0) * 1000
    return report


def _rebuild(target: Target, user_ids: list[str]) -> int:
    """Rebuild the users again in one transaction (alone each, if any fails); return how many."""
    try:
        return _attempt(target, user_ids)
    except claims.Fenced:
        raise
    except Exception as exc:
        if len(user_ids) == 1:
            _record_failure(target, user_ids[0], exc)
            return 0
        log.info("catch-up batch of %d users rolled back (%s); redoing each alone", len(user_ids), exc)
    done = 0
    for uid in user_ids:
        try:
            done += _attempt(target, [uid])
        except claims.Fenced:
            raise
        except Exception as exc:
            _record_failure(target, uid, exc)
    return done


class _Invalid(Rollback):
    """Some user's rebuilt runs did not validate."""

    def __init__(self, outcomes: dict[str, UserOutcome]) -> None:
        bad = [o for o in outcomes.values() if not o.success]
        super().__init__(f"{len(bad)} users' runs did not validate")
        self.outcomes = outcomes


def _attempt(target: Target, user_ids: list[str]) -> int:
    db, options = target.db, target.options
    started = db.now()
    t0 = time.perf_counter()
    with write_transaction(db.engine) as conn:
        batch_statements(conn)
        users = fetch_users(conn, user_ids)
        ids = [u.id for u in users]  # a user deleted meanwhile has nothing left to rebuild
        seen = note_positions(conn, ids, dry_run=False)
        outcomes = rebuild_bulk_batch(conn, users, options, started)
        if not all(o.success for o in outcomes.values()):
            raise _Invalid(outcomes)
        now = db.now()
        share = (time.perf_counter() - t0) * 1000 / max(len(ids), 1)
        entries = [
            history_entry(
                options,
                outcomes[uid],
                user_id=uid,
                kind=target.history_kind,
                started=started,
                finished=now,
                duration_ms=share,
            )
            for uid in ids
        ]
        history.record_history(conn, entries)
        capture.record_seen(conn, target.operation_id, seen)
        capture.record_caught_up(conn, target.operation_id, ids)
        claims.fence_operation(conn, target.operation_id, target.epoch)
    return len(ids)


def _record_failure(target: Target, user_id: str, exc: BaseException) -> None:
    """Mark the user failed in the ledger: caught up, its rebuild failed alone."""
    if isinstance(exc, _Invalid):
        outcome = exc.outcomes.get(user_id)
        kinds = sorted({v.kind for v in outcome.violations}) if outcome else []
        error_class = "InvariantViolation"
        message = f"catch-up: violations after rebuild ({', '.join(kinds)})"
    else:
        error_class = exc.__class__.__name__
        text = mask_secrets(str(getattr(exc, "orig", None) or exc)).strip()
        message = "catch-up: " + (text.splitlines()[0] if text else "")
    log.warning("bulk operation %s: catch-up of user %s failed: %s", target.operation_id, user_id, message)
    item = operations.ItemResult(
        user_id, operations.FAILED, 1, error_class=error_class, error_message=message[:_MESSAGE_CHARS]
    )
    now = target.db.now()
    with write_transaction(target.db.engine) as conn:
        history.record_history(
            conn,
            [
                history_entry(
                    target.options,
                    None,
                    user_id=user_id,
                    kind=target.history_kind,
                    started=now,
                    finished=now,
                    duration_ms=0.0,
                    error=f"{error_class}: {message}",
                )
            ],
        )
        counted = ledger.record_items(conn, target.operation_id, [item], now)
        claims.fence_operation(conn, target.operation_id, target.epoch)
        ledger.add_tally_change(conn, target.operation_id, counted)
