"""``Storage``: the package's public face over one database (SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, delete, insert, inspect, update
from sqlalchemy.exc import SQLAlchemyError

from potato_ops import audit, history, queries, timezones
from potato_ops import backup as backups
from potato_ops.config import mask_url, resolve_database_url
from potato_ops.db import (
    lock_users,
    make_engine,
    read_connection,
    server_version,
    write_transaction,
)
from potato_ops.errors import BackupError, ConfigError, InvalidDateRangeError, SchemaError
from potato_ops.models import (
    MULTIPLE_ACTIVE,
    OVERLAP,
    Backup,
    DayMark,
    InvariantReport,
    RebuildResult,
    Run,
    User,
    ValidationResult,
)
from potato_ops.rebuild import BACKUP_ALWAYS, BACKUP_NEVER, BatchOptions, UserOutcome, rebuild_batch
from potato_ops.runs import (
    Clock,
    check_invariants,
    is_active,
    local_today,
    parse_date,
    parse_date_range,
    system_clock,
)
from potato_ops.schema import RUNS_V2_FLAG, check_schema, create_schema, feature_flags, metadata, runs

if TYPE_CHECKING:
    from potato_ops.bulk import BulkConfig, BulkResult, Progress

log = logging.getLogger("potato_ops")


class _Rollback(Exception):
    """Raised inside a transaction to roll it back on purpose (failed validation, dry run)."""


class Storage:
    """Operations on one Project Potato database.

    Create it with :meth:`connect`. Every method opens its own short transaction; writers
    take per-user locks (see ``potato_ops.db``) so they can run from many threads at once.
    """

    def __init__(self, engine: Engine, clock: Clock = system_clock) -> None:
        self._engine = engine
        self.clock = clock
        self._schema_ok = False  # set by the first successful schema check

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        env_var: str = "POTATO_DATABASE_URL",
    ) -> Storage:
        """Return storage for url, else $POTATO_DATABASE_URL (or env_var), else embedded SQLite."""
        resolved = resolve_database_url(url, env_var)
        try:
            engine = make_engine(resolved)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"cannot use database {mask_url(resolved)}: {exc}") from exc
        return cls(engine, clock or system_clock)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    # ------------------------------------------------------------------ basics

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for the app's own reads and writes."""
        return self._engine

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return mask_url(self._engine.url.render_as_string(hide_password=True))

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self._engine.dialect.name

    def now(self) -> datetime:
        """Return the storage clock's current instant."""
        return self.clock()

    def close(self) -> None:
        """Release the engine's connections."""
        self._engine.dispose()

    def create_schema(self) -> None:
        """Create missing tables (idempotent); app tables with data are left untouched."""
        try:
            create_schema(self._engine)
            self._schema_ok = True
        except SQLAlchemyError as exc:
            raise SchemaError(f"cannot create the schema on {self.url}: {getattr(exc, 'orig', exc)}") from exc

    def check_schema(self) -> None:
        """Raise SchemaError if tables or columns the contract needs are missing."""
        try:
            check_schema(self._engine)
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise SchemaError(f"cannot read the schema of {self.url}: {first}") from exc

    def _require_schema(self) -> None:
        """Raise SchemaError if the contract's tables are missing; checked once, on first use."""
        if self._schema_ok:
            return
        # A database that can't be reached raises here as on any first query (not SchemaError).
        present = set(inspect(self._engine).get_table_names())
        if any(t.name not in present for t in metadata.sorted_tables):
            self.check_schema()  # raises, naming every missing table and column
        self._schema_ok = True

    def _read(self) -> AbstractContextManager[Connection]:
        self._require_schema()
        return read_connection(self._engine)

    def _write(self) -> AbstractContextManager[Connection]:
        self._require_schema()
        return write_transaction(self._engine)

    def describe(self) -> dict[str, str]:
        """Return the dialect, server version and masked URL (for reports)."""
        with read_connection(self._engine) as conn:  # needs no table
            version = server_version(conn)
        return {"dialect": self.dialect, "server_version": version, "url": self.url}

    # ------------------------------------------------------------------ reads

    def get_user(self, user_id: str) -> User:
        """Return the user, or raise UserNotFoundError."""
        with self._read() as conn:
            return queries.fetch_user(conn, user_id)

    def get_user_by_email(self, email: str) -> User:
        """Return the user with this email, or raise UserNotFoundError."""
        with self._read() as conn:
            return queries.fetch_user_by_email(conn, email)

    def get_all_users(self) -> list[User]:
        """Return every user, ordered by id."""
        with self._read() as conn:
            return queries.fetch_users(conn)

    def get_user_runs(self, user_id: str) -> list[Run]:
        """Return the user's stored runs sorted by start date."""
        with self._read() as conn:
            return queries.fetch_runs(conn, [user_id]).get(user_id, [])

    def get_user_day_marks(self, user_id: str) -> list[DayMark]:
        """Return the user's day marks (marked and un-marked) sorted by date."""
        with self._read() as conn:
            return queries.fetch_day_marks(conn, user_id)

    def local_today(self, user: User) -> date:
        """Return the user's local date now."""
        return local_today(user.timezone, self.now())

    def get_active_run(self, user_id: str) -> Run | None:
        """Return the run active now by the rule (not by the stored flag), or None."""
        user = self.get_user(user_id)
        today = self.local_today(user)
        for run in self.get_user_runs(user_id):
            if run.start_date <= run.end_date and is_active(run.start_date, run.end_date, today):
                return run
        return None

    def get_feature_flag(self, name: str = RUNS_V2_FLAG) -> bool:
        """Return the flag's state; a missing flag is off."""
        with self._read() as conn:
            return queries.fetch_feature_flag(conn, name)

    def set_feature_flag(self, name: str, enabled: bool) -> None:
        """Turn a feature flag on or off (creating it)."""
        with self._write() as conn:
            done = conn.execute(
                update(feature_flags).where(feature_flags.c.name == name).values(enabled=enabled)
            ).rowcount
            if not done:
                conn.execute(insert(feature_flags).values(name=name, enabled=enabled))

    # ------------------------------------------------------------------ rebuild

    def rebuild_user_runs(
        self,
        user_id: str,
        from_date: date | str | None = None,
        to_date: date | str | None = None,
        *,
        backup: bool = True,
        dry_run: bool = False,
    ) -> RebuildResult:
        """Rebuild one user's runs (all, or those touching the range) in one transaction.

        Backup, rebuild and validation commit together; on any violation nothing is
        committed and ``success`` is False. A dry run computes the same and rolls back.
        """
        lo, hi = parse_date_range(from_date, to_date)
        operation_id = uuid.uuid4().hex
        options = BatchOptions(
            operation_id,
            lo,
            hi,
            backup=BACKUP_ALWAYS if backup else BACKUP_NEVER,
            backup_reason="dry_run" if dry_run else "rebuild",
        )
        started = self.now()
        t0 = time.perf_counter()
        outcome: UserOutcome | None = None
        error: str | None = None
        user: User | None = None
        flag = False
        try:
            with self._write() as conn:
                # Read in the rebuild's own transaction: two connections and their round
                # trips fewer. UserNotFoundError rolls back a transaction that wrote nothing.
                user = queries.fetch_user(conn, user_id)
                flag = queries.fetch_feature_flag(conn, RUNS_V2_FLAG)
                outcome = rebuild_batch(conn, [user], options, started)[user.id]
                if dry_run or not outcome.success:
                    raise _Rollback
                duration = (time.perf_counter() - t0) * 1000
                history.record_history(conn, [self._history(options, outcome, started, duration)])
        except _Rollback:
            pass
        except SQLAlchemyError as exc:
            if user is None:
                raise  # the user could not even be read: nothing to report on
            error = f"{exc.__class__.__name__}: {getattr(exc, 'orig', exc)}"
            log.warning("rebuild of %s rolled back: %s", user_id, error)
        assert user is not None  # read first in the transaction, or raised
        duration = (time.perf_counter() - t0) * 1000
        if outcome is None:
            outcome = UserOutcome(user.id)
        success = error is None and outcome.success
        if not success and not dry_run:
            with self._write() as conn:
                history.record_history(
                    conn,
                    [
                        self._history(
                            options,
                            outcome,
                            started,
                            duration,
                            error=error or "invariant violations",
                        )
                    ],
                )
        saved_backup = outcome.backup
        if saved_backup is not None and (dry_run or not success):
            saved_backup = replace(saved_backup, id=None)  # rolled back: not in the database
        return RebuildResult(
            success=success,
            operation_id=operation_id,
            runs_deleted=outcome.runs_deleted,
            runs_created=outcome.runs_created,
            total_days_processed=outcome.days_processed,
            duration_ms=duration,
            invariant_violations=outcome.violations,
            backup=saved_backup,
            user_id=user.id,
            dry_run=dry_run,
            from_date=lo,
            to_date=hi,
            runs_unchanged=outcome.runs_unchanged,
            active_flags_changed=outcome.active_flags_changed,
            deleted_runs=outcome.deleted_runs,
            created_runs=outcome.created_runs,
            feature_flag_enabled=flag,
            error=error,
        )

    def _history(
        self,
        options: BatchOptions,
        outcome: UserOutcome,
        started: datetime,
        duration_ms: float,
        error: str | None = None,
    ) -> history.HistoryEntry:
        return history.HistoryEntry(
            operation_id=options.operation_id,
            user_id=outcome.user_id,
            kind=history.PARTIAL_REBUILD if options.partial else history.REBUILD,
            started_at=started,
            finished_at=self.now(),
            duration_ms=duration_ms,
            success=error is None and outcome.success,
            runs_deleted=outcome.runs_deleted,
            runs_created=outcome.runs_created,
            days_processed=outcome.days_processed,
            violations=len(outcome.violations),
            from_date=options.from_date,
            to_date=options.to_date,
            error=error,
        )

    def validate_rebuild_results(
        self, user_id: str, before_runs: Sequence[Run], after_runs: Sequence[Run]
    ) -> ValidationResult:
        """Check after_runs against the user's marks and every invariant.

        ``before_runs`` is the state before the rebuild; it is reported on, never trusted.
        """
        user = self.get_user(user_id)
        with self._read() as conn:
            marks = queries.fetch_marked_dates(conn, [user_id]).get(user_id, [])
        violations = check_invariants(user_id, list(after_runs), marks, self.local_today(user))
        if before_runs and not after_runs and marks:
            log.info("user %s had %d runs before and none after", user_id, len(before_runs))
        return ValidationResult(not violations, violations)

    # ------------------------------------------------------------------ backups

    def backup_user_runs(self, user_id: str) -> Backup:
        """Persist a checksummed copy of the user's runs and return it."""
        with self._write() as conn:
            queries.fetch_user(conn, user_id)
            lock_users(conn, [user_id])
            current = queries.fetch_runs(conn, [user_id]).get(user_id, [])
            made = backups.make_backup(user_id, current, self.now(), reason="manual")
            return backups.save_backups(conn, [made])[0]

    def get_backups(self, user_id: str) -> list[Backup]:
        """Return the user's persisted backups, newest first."""
        with self._read() as conn:
            return backups.fetch_backups(conn, user_id)

    def get_backup(self, backup_id: int) -> Backup:
        """Return one persisted backup, or raise BackupError."""
        with self._read() as conn:
            return backups.fetch_backup(conn, int(backup_id))

    def restore_user_runs(self, user_id: str, backup: Backup | int) -> list[Run]:
        """Replace the user's runs with the backup's, atomically; return the restored runs.

        Refuses (BackupError, nothing changed) a backup of another user or a bad checksum.
        Active flags are set by the rule at restore time.
        """
        if not isinstance(backup, Backup):
            backup = self.get_backup(int(backup))
        user = self.get_user(user_id)
        backups.verify_backup(user_id, backup)
        started = self.now()
        t0 = time.perf_counter()
        with self._write() as conn:
            lock_users(conn, [user_id])
            deleted = backups.replace_runs(conn, user_id, backup.runs, self.local_today(user))
            history.record_history(
                conn,
                [
                    history.HistoryEntry(
                        operation_id=uuid.uuid4().hex,
                        user_id=user_id,
                        kind=history.RESTORE,
                        started_at=started,
                        finished_at=self.now(),
                        duration_ms=(time.perf_counter() - t0) * 1000,
                        success=True,
                        runs_deleted=deleted,
                        runs_created=len(backup.runs),
                    )
                ],
            )
        return self.get_user_runs(user_id)

    def remove_orphan_runs(self, owner_ids: Sequence[str], *, dry_run: bool = False) -> dict[str, Backup]:
        """Back up and delete the runs of ids that are not users; return the backups by owner.

        A rebuild cannot repair such runs (there is no user to rebuild). Ownership is checked
        again under the per-user locks; ids that are users are left alone. A dry run returns
        the backups it would take (ids None) and writes nothing.
        """
        taken: dict[str, Backup] = {}
        ids = sorted(set(owner_ids))
        if not ids:
            return taken
        try:
            with self._write() as conn:
                lock_users(conn, ids)
                existing = {u.id for u in queries.fetch_users(conn, ids)}
                stored = queries.fetch_runs(conn, ids)
                orphans = [uid for uid in ids if uid not in existing and stored.get(uid)]
                made = [backups.make_backup(uid, stored[uid], self.now(), reason="orphan") for uid in orphans]
                if dry_run:
                    taken = {b.user_id: b for b in made}
                    raise _Rollback
                taken = {b.user_id: b for b in backups.save_backups(conn, made)}
                if orphans:
                    conn.execute(delete(runs).where(runs.c.user_id.in_(orphans)))
        except _Rollback:
            pass
        return taken

    def prune_backups(self, older_than: timedelta | datetime, keep_latest: int = 1) -> int:
        """Delete backups older than the age (or instant), keeping each user's newest ones."""
        if keep_latest < 0:
            raise BackupError("keep_latest must be 0 or more")
        cutoff = self.now() - older_than if isinstance(older_than, timedelta) else older_than
        with self._write() as conn:
            return backups.prune_backups(conn, cutoff, keep_latest)

    # ------------------------------------------------------------------ timezones

    def update_user(self, user_id: str, *, timezone: str | None = None) -> User:
        """Update the user's timezone (validated, logged); return the user as now stored."""
        if timezone is not None:
            with self._write() as conn:
                timezones.change_timezone(conn, user_id, timezone, self.now())
        return self.get_user(user_id)

    def get_users_with_timezone_changes(self, since: datetime | str | None = None) -> list[str]:
        """Return users whose timezone changed after their last successful rebuild."""
        try:
            when = datetime.fromisoformat(since.strip()) if isinstance(since, str) else since
        except ValueError as exc:
            raise InvalidDateRangeError(f"since {since!r} is not an ISO date or datetime") from exc
        with self._read() as conn:
            return timezones.users_with_pending_timezone_changes(conn, when)

    # ------------------------------------------------------------------ validation & detection

    def validate_invariants(self, user_ids: Sequence[str] | None = None) -> InvariantReport:
        """Scan the database (or the given users) for every kind of invariant violation."""
        with self._read() as conn:
            return audit.invariant_report(conn, self.now(), user_ids)

    def get_users_with_overlapping_runs(self) -> list[str]:
        """Return users with overlapping (or duplicated) runs."""
        return self._users_with(OVERLAP)

    def get_users_with_multiple_active_runs(self) -> list[str]:
        """Return users with more than one run flagged active."""
        return self._users_with(MULTIPLE_ACTIVE)

    def _users_with(self, kind: str) -> list[str]:
        report = self.validate_invariants()
        return sorted({v.user_id for v in report.violations if v.kind == kind})

    def detect_data_corruption(self) -> list[str]:
        """Return users whose stored runs break any invariant."""
        return self.validate_invariants().users_with_violations

    def get_users_with_slow_rebuild_history(self, threshold_ms: float = 1000) -> list[str]:
        """Return users with a recorded rebuild slower than threshold_ms, slowest first."""
        with self._read() as conn:
            return history.slow_users(conn, threshold_ms)

    def refresh_active_runs(self) -> int:
        """Bring every stale active flag up to date; return how many flags changed."""
        with self._write() as conn:
            return audit.refresh_active_flags(conn, self.now())

    # ------------------------------------------------------------------ bulk (potato_ops.bulk)

    def bulk_rebuild_users(
        self, user_ids: Sequence[str], config: BulkConfig | None = None, **kw: Any
    ) -> BulkResult:
        """Rebuild many users in batches across workers; see ``potato_ops.bulk``."""
        from potato_ops import bulk

        return bulk.bulk_rebuild_users(self, user_ids, config, **kw)

    def get_rebuild_progress(self, operation_id: str) -> Progress:
        """Return a bulk operation's progress from the ledger."""
        from potato_ops import bulk

        return bulk.get_rebuild_progress(self, operation_id)

    def resume_bulk_rebuild(self, operation_id: str, **kw: Any) -> BulkResult:
        """Finish an interrupted operation: only its users not yet completed."""
        from potato_ops import bulk

        return bulk.resume_bulk_rebuild(self, operation_id, **kw)

    def cancel_bulk_rebuild(self, operation_id: str) -> Progress:
        """Ask a running operation to stop at its next batch boundary."""
        from potato_ops import bulk

        return bulk.cancel_bulk_rebuild(self, operation_id)

    def list_operations(self, status: str | None = None, limit: int = 20) -> list[Progress]:
        """Return recent operations, newest first."""
        from potato_ops import bulk

        return bulk.list_operations(self, status, limit)


__all__ = ["Storage", "parse_date"]
