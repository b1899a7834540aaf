"""Rebuild one user's runs, full or partial, in one transaction; validate a rebuild's result.

The user is locked, then read whole in one statement (``db.reads.read_user``: the user, the
feature flag, its runs and the grouping of its marks) and handed to the batch engine
(``ops.batch_rebuild``) as what was read ahead; a window without a backup reads only the runs
near it. Backup, rebuild, validation and the history entry commit together.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.db import history
from potato_ops.db.engine import lock_users
from potato_ops.db.reads import (
    UserRead,
    fetch_marked_dates,
    fetch_runs,
    fetch_user,
    fetch_user_and_flag,
    read_user,
)
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.db.timezone_log import change_timezone
from potato_ops.domain.dates import local_today, parse_date_range, validate_timezone
from potato_ops.domain.invariants import check_invariants
from potato_ops.domain.models import RebuildResult, Run, User, ValidationResult
from potato_ops.errors import MarksChangedError
from potato_ops.ops import freshness
from potato_ops.ops.batch_rebuild import (
    BACKUP_ALWAYS,
    BACKUP_CHANGED,
    BACKUP_NEVER,
    FIRST_DAY,
    LAST_DAY,
    MARK_PAD,
    BatchOptions,
    Premarks,
    ReadAhead,
    UserOutcome,
    history_entry,
    padded,
    rebuild_batch,
    rebuild_read_ahead,
)
from potato_ops.ops.database import Database, Rollback

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger("potato_ops")


def _reads_whole(options: BatchOptions) -> bool:
    """Return True when a single-user rebuild reads every run: full, or backed up (all runs)."""
    return not options.partial or options.backup == BACKUP_ALWAYS


def _marks_window(options: BatchOptions) -> tuple[date, date] | None:
    """Return the marks a single-user read takes ahead: None (all, grouped) for a full rebuild."""
    if not options.partial:
        return None
    return padded(options.from_date or FIRST_DAY, options.to_date or LAST_DAY, MARK_PAD)


def _rebuild_read_user(conn: Connection, read: UserRead, options: BatchOptions, now: datetime) -> UserOutcome:
    """Rebuild one user, locked and read whole by the caller (``read_user``), from that read.

    A partial rebuild's marks are those read ahead near the window; marks further out are
    read only if a streak reaches the edge of that read.
    """
    uid = read.user.id
    window = _marks_window(options)
    if window is None:
        ahead = ReadAhead(grouped={uid: read.grouping}, stored={uid: read.runs})
    else:
        ahead = ReadAhead(
            stored={uid: read.runs}, premarks=Premarks(window[0], window[1], {uid: read.grouping})
        )
    return rebuild_read_ahead(conn, [read.user], options, now, ahead)[uid]


@dataclass
class _Attempt:
    """What one single-user rebuild read and did, whether it committed or rolled back."""

    options: BatchOptions
    started: datetime
    t0: float
    user: User | None = None
    flag: bool = False
    outcome: UserOutcome | None = None
    runs_after: list[Run] = field(default_factory=list)
    error: str | None = None

    @property
    def kind(self) -> str:
        return history.PARTIAL_REBUILD if self.options.partial else history.REBUILD

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000


def rebuild_user_runs(
    db: Database,
    user_id: str,
    from_date: date | str | None = None,
    to_date: date | str | None = None,
    *,
    backup: bool = True,
    dry_run: bool = False,
    timezone: str | None = None,
) -> RebuildResult:
    """Rebuild one user's runs (all, or those touching the range) in one transaction.

    Backup, rebuild and validation commit together; on any violation nothing is
    committed and ``success`` is False. A dry run computes the same and rolls back.
    With ``timezone``, the user's zone changes (logged) in the same transaction first, so a
    dry run shows the active flags the move would give and rolls both back. A rebuild whose
    user's marks changed between its read and its commit redoes itself (``freshness``);
    MarksChangedError when they changed under every try.
    """
    for attempt in range(freshness.MAX_TRIES):
        try:
            return _rebuild_user_runs_once(
                db,
                user_id,
                from_date,
                to_date,
                backup=backup,
                dry_run=dry_run,
                timezone=timezone,
                hold_first=attempt == freshness.MAX_TRIES - 1,
            )
        except freshness.MarksChanged:
            log.info("rebuild of %s: the app changed its marks meanwhile; redoing it", user_id)
    raise MarksChangedError(
        f"the marks of user {user_id} changed during each of {freshness.MAX_TRIES} tries of its "
        "rebuild; nothing was committed (try again)"
    )


def _rebuild_user_runs_once(
    db: Database,
    user_id: str,
    from_date: date | str | None,
    to_date: date | str | None,
    *,
    backup: bool,
    dry_run: bool,
    timezone: str | None,
    hold_first: bool,
) -> RebuildResult:
    if timezone is not None:
        validate_timezone(timezone)
    lo, hi = parse_date_range(from_date, to_date)
    options = BatchOptions(
        uuid.uuid4().hex,
        lo,
        hi,
        # A rebuild that changes nothing keeps no backup: the backups of a user then tell what
        # there was before each change, not how often a cell was run.
        backup=BACKUP_CHANGED if backup else BACKUP_NEVER,
        backup_reason="dry_run" if dry_run else "rebuild",
        keep_runs_after=True,
    )
    attempt = _Attempt(options, db.now(), time.perf_counter())
    try:
        with db.write() as conn:
            _rebuild_in_transaction(
                db, conn, attempt, user_id, timezone, dry_run=dry_run, hold_first=hold_first
            )
    except Rollback:
        pass
    except SQLAlchemyError as exc:
        if attempt.user is None:
            raise  # the user could not even be read: nothing to report on
        attempt.error = f"{exc.__class__.__name__}: {getattr(exc, 'orig', exc)}"
        log.warning("rebuild of %s rolled back: %s", user_id, attempt.error)
    return _result(db, attempt, dry_run=dry_run)


def _rebuild_in_transaction(
    db: Database,
    conn: Connection,
    attempt: _Attempt,
    user_id: str,
    timezone: str | None,
    *,
    dry_run: bool,
    hold_first: bool = False,
) -> None:
    """Read, rebuild, validate and record the user in the caller's transaction; Rollback unless kept.

    Read in the rebuild's own transaction: two connections and their round trips fewer.
    UserNotFoundError rolls back a transaction that wrote nothing.
    """
    options = attempt.options
    if _reads_whole(options):
        # The lock first, in a statement of its own, so that the one read after it (the user,
        # the flag, the runs and the marks) sees every earlier commit.
        lock_users(conn, [user_id])
        seen = freshness.read_position(conn, user_id, hold=hold_first)
        if timezone is not None:
            change_timezone(conn, user_id, timezone, attempt.started)
        read = read_user(conn, user_id, RUNS_V2_FLAG, _marks_window(options))
        attempt.user, attempt.flag = read.user, read.flag
        attempt.outcome = outcome = _rebuild_read_user(conn, read, options, attempt.started)
    else:  # a window without a backup: only the runs near it are read
        lock_users(conn, [user_id])
        seen = freshness.read_position(conn, user_id, hold=hold_first)
        if timezone is not None:
            change_timezone(conn, user_id, timezone, attempt.started)
        attempt.user, attempt.flag = fetch_user_and_flag(conn, user_id, RUNS_V2_FLAG)
        attempt.outcome = outcome = rebuild_batch(conn, [attempt.user], options, attempt.started)[
            attempt.user.id
        ]
    user = attempt.user
    if outcome.success:
        if outcome.runs_after is not None:
            attempt.runs_after = outcome.runs_after
        else:  # a window-only read of an unchanged user
            attempt.runs_after = fetch_runs(conn, [user.id]).get(user.id, [])
    freshness.ensure_unchanged(conn, user.id, seen, hold=not dry_run)
    if dry_run or not outcome.success:
        raise Rollback
    entry = history_entry(
        options,
        outcome,
        user_id=user.id,
        kind=attempt.kind,
        started=attempt.started,
        finished=db.now(),
        duration_ms=attempt.elapsed_ms(),
    )
    history.record_history(conn, [entry])


def _result(db: Database, attempt: _Attempt, *, dry_run: bool) -> RebuildResult:
    """Return the attempt's result, recording a failure (not a dry run) in a transaction of its own."""
    user = attempt.user
    assert user is not None  # read first in the transaction, or raised
    duration = attempt.elapsed_ms()
    outcome = attempt.outcome or UserOutcome(user.id)
    error = attempt.error
    success = error is None and outcome.success
    options = attempt.options
    if not success and not dry_run:
        with db.write() as conn:
            entry = history_entry(
                options,
                outcome,
                user_id=user.id,
                kind=attempt.kind,
                started=attempt.started,
                finished=db.now(),
                duration_ms=duration,
                error=error or "invariant violations",
            )
            history.record_history(conn, [entry])
    saved_backup = outcome.backup
    if saved_backup is not None and (dry_run or not success):
        saved_backup = replace(saved_backup, id=None)  # rolled back: not in the database
    return RebuildResult(
        success=success,
        operation_id=options.operation_id,
        runs_deleted=outcome.runs_deleted,
        runs_created=outcome.runs_created,
        total_days_processed=outcome.days_processed,
        duration_ms=duration,
        invariant_violations=outcome.violations,
        backup=saved_backup,
        user_id=user.id,
        dry_run=dry_run,
        from_date=options.from_date,
        to_date=options.to_date,
        runs_unchanged=outcome.runs_unchanged,
        active_flags_changed=outcome.active_flags_changed,
        deleted_runs=outcome.deleted_runs,
        created_runs=outcome.created_runs,
        feature_flag_enabled=attempt.flag,
        error=error,
        runs_after=attempt.runs_after if success else [],
    )


def validate_rebuild_results(
    db: Database, user_id: str, before_runs: Sequence[Run], after_runs: Sequence[Run]
) -> ValidationResult:
    """Check after_runs against the user's marks and every invariant.

    ``before_runs`` is the state before the rebuild; it is reported on, never trusted.
    """
    with db.read() as conn:
        user = fetch_user(conn, user_id)
        marks = fetch_marked_dates(conn, [user_id]).get(user_id, [])
    violations = check_invariants(user_id, list(after_runs), marks, local_today(user.timezone, db.now()))
    if before_runs and not after_runs and marks:
        log.info("user %s had %d runs before and none after", user_id, len(before_runs))
    return ValidationResult(not violations, violations)
