"""``Storage``: the package's public face over one database (SQLite or PostgreSQL).

It delegates: every method opens the right connection and calls one operation (``ops``) or
one statement (``db``); none of them orchestrates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from potato_ops.db import backups, history, reads, run_records, timezone_log
from potato_ops.db.distributed import lay_out
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.db.throttling import Episode
from potato_ops.domain.dates import Clock, local_today, parse_since, system_clock
from potato_ops.domain.models import (
    Backup,
    DayMark,
    InvariantReport,
    RebuildResult,
    Run,
    User,
    ValidationResult,
    ViolationKind,
)
from potato_ops.domain.runs import should_be_active
from potato_ops.errors import BackupError
from potato_ops.ops import rebuild, repair, restore, scan
from potato_ops.ops.bulk import api as bulk
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.bulk.results import BulkResult, Progress, ProgressCallback
from potato_ops.ops.database import Database
from potato_ops.ops.repair import UserRepair
from potato_ops.ops.scan import IndexCheck


class Storage:
    """Operations on one Project Potato database.

    Create it with ``Storage.connect(url)``. Every method is one transaction; the writing ones
    take per-user locks (see ``potato_ops.db.engine``) so they can run from many threads at once.
    """

    RUNS_V2_FLAG = RUNS_V2_FLAG  # the feature flag that gates runs

    def __init__(self, engine: Engine, clock: Clock = system_clock) -> None:
        self.database = Database(engine, clock)

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        env_var: str = "POTATO_DATABASE_URL",
    ) -> Storage:
        """Return storage for url, else $POTATO_DATABASE_URL (or env_var), else embedded SQLite."""
        database = Database.connect(url, clock=clock, env_var=env_var)
        return cls(database.engine, database.clock)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    # ------------------------------------------------------------------ basics

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for the app's own reads and writes."""
        return self.database.engine

    @property
    def clock(self) -> Clock:
        """The clock that stamps history, backups, the timezone log and the ledger."""
        return self.database.clock

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self.database.url

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self.database.dialect

    def now(self) -> datetime:
        """Return the storage clock's current instant."""
        return self.database.now()

    def close(self) -> None:
        """Release the engine's connections."""
        self.database.close()

    def create_schema(self) -> None:
        """Create missing tables (idempotent); app tables with data are left untouched."""
        self.database.create_schema()

    def check_schema(self) -> None:
        """Raise SchemaError if tables or columns the contract needs are missing."""
        self.database.check_schema()

    def describe(self) -> dict[str, str]:
        """Return the dialect, server version and masked URL (for reports)."""
        return self.database.describe()

    # ------------------------------------------------------------------ reads

    def get_user(self, user_id: str) -> User:
        """Return the user, or raise UserNotFoundError."""
        with self.database.read() as conn:
            return reads.fetch_user(conn, user_id)

    def get_user_by_email(self, email: str) -> User:
        """Return the user with this email, or raise UserNotFoundError."""
        with self.database.read() as conn:
            return reads.fetch_user_by_email(conn, email)

    def get_all_users(self) -> list[User]:
        """Return every user, ordered by id."""
        with self.database.read() as conn:
            return reads.fetch_users(conn)

    def get_user_runs(self, user_id: str) -> list[Run]:
        """Return the user's stored runs sorted by start date."""
        with self.database.read() as conn:
            return reads.fetch_runs(conn, [user_id]).get(user_id, [])

    def get_user_day_marks(self, user_id: str) -> list[DayMark]:
        """Return the user's day marks (marked and un-marked) sorted by date."""
        with self.database.read() as conn:
            return reads.fetch_day_marks(conn, user_id)

    def local_today(self, user: User) -> date:
        """Return the user's local date now."""
        return local_today(user.timezone, self.now())

    def get_active_run(self, user_id: str) -> Run | None:
        """Return the run active now by the rule (not by the stored flag), or None."""
        today = self.local_today(self.get_user(user_id))
        for run in self.get_user_runs(user_id):
            if should_be_active(run.start_date, run.end_date, today):
                return run
        return None

    def get_feature_flag(self, name: str = RUNS_V2_FLAG) -> bool:
        """Return the flag's state; a missing flag is off."""
        return self.database.get_feature_flag(name)

    def set_feature_flag(self, name: str, enabled: bool) -> None:
        """Turn a feature flag on or off (creating it)."""
        self.database.set_feature_flag(name, enabled)

    # ------------------------------------------------------------------ rebuild

    def rebuild_user_runs(
        self,
        user_id: str,
        from_date: date | str | None = None,
        to_date: date | str | None = None,
        *,
        backup: bool = True,
        dry_run: bool = False,
        timezone: str | None = None,
    ) -> RebuildResult:
        """Rebuild one user's runs (all, or those touching the range) in one transaction.

        With ``timezone``, the user's timezone is changed (and logged) in the same
        transaction, so the new zone and the runs it gives commit together.
        """
        return rebuild.rebuild_user_runs(
            self.database, user_id, from_date, to_date, backup=backup, dry_run=dry_run, timezone=timezone
        )

    def validate_rebuild_results(
        self, user_id: str, before_runs: Sequence[Run], after_runs: Sequence[Run]
    ) -> ValidationResult:
        """Check after_runs against the user's marks and every invariant."""
        return rebuild.validate_rebuild_results(self.database, user_id, before_runs, after_runs)

    # ------------------------------------------------------------------ backups

    def backup_user_runs(self, user_id: str) -> Backup:
        """Persist a checksummed copy of the user's runs and return it."""
        return restore.backup_user_runs(self.database, user_id)

    def get_backups(self, user_id: str) -> list[Backup]:
        """Return the user's persisted backups, newest first."""
        with self.database.read() as conn:
            return backups.fetch_backups(conn, user_id)

    def get_ticket_operation_ids(self, ticket: str) -> set[str]:
        """Return the ids of the operations recorded runbook runs made for this ticket."""
        with self.database.read() as conn:
            return run_records.operation_ids_for_ticket(conn, ticket)

    def get_backup(self, backup_id: int) -> Backup:
        """Return one persisted backup, or raise BackupError."""
        with self.database.read() as conn:
            return backups.fetch_backup(conn, int(backup_id))

    def restore_user_runs(self, user_id: str, backup: Backup | int, *, dry_run: bool = False) -> list[Run]:
        """Replace the user's runs with the backup's, atomically; return the restored runs.

        A dry run returns the runs the restore would leave and writes nothing.
        """
        return restore.restore_user_runs(self.database, user_id, backup, dry_run=dry_run)

    def remove_orphan_runs(self, owner_ids: Sequence[str], *, dry_run: bool = False) -> dict[str, Backup]:
        """Back up and delete the runs of ids that are not users; return the backups by owner."""
        return restore.remove_orphan_runs(self.database, owner_ids, dry_run=dry_run)

    def prune_backups(self, older_than: timedelta | datetime, keep_latest: int = 1) -> int:
        """Delete backups older than the age (or instant), keeping each user's newest ones."""
        return restore.prune_backups(self.database, older_than, keep_latest)

    # ------------------------------------------------------------------ timezones

    def update_user(self, user_id: str, *, timezone: str | None = None) -> User:
        """Update the user's timezone (validated, logged); return the user as now stored."""
        if timezone is not None:
            with self.database.write() as conn:
                timezone_log.change_timezone(conn, user_id, timezone, self.now())
        return self.get_user(user_id)

    def get_users_with_timezone_changes(self, since: datetime | str | None = None) -> list[str]:
        """Return users whose timezone changed after their last successful rebuild.

        ``since`` as ``parse_since`` reads it: a duration back from now (``7d``), an ISO date or
        datetime, or a datetime (naive means UTC).
        """
        when = None if since is None else parse_since(since, self.now())
        with self.database.read() as conn:
            return timezone_log.users_with_pending_timezone_changes(conn, when)

    # ------------------------------------------------------------------ validation & detection

    def validate_invariants(self, user_ids: Sequence[str] | None = None) -> InvariantReport:
        """Scan the database (or the given users) for every kind of invariant violation."""
        return scan.validate_invariants(self.database, user_ids)

    def get_users_with_overlapping_runs(self) -> list[str]:
        """Return users with overlapping (or duplicated) runs."""
        return scan.users_with(self.database, ViolationKind.OVERLAP)

    def get_users_with_multiple_active_runs(self) -> list[str]:
        """Return users with more than one run flagged active."""
        return scan.users_with(self.database, ViolationKind.MULTIPLE_ACTIVE)

    def detect_data_corruption(self) -> list[str]:
        """Return users whose stored runs break any invariant."""
        return self.validate_invariants().users_with_violations

    def get_users_with_slow_rebuild_history(self, threshold_ms: float = 1000) -> list[str]:
        """Return users with a recorded rebuild slower than threshold_ms, slowest first."""
        with self.database.read() as conn:
            return history.slow_users(conn, threshold_ms)

    def refresh_active_runs(self) -> int:
        """Bring every stale active flag up to date; return how many flags changed."""
        return scan.refresh_active_runs(self.database)

    # ------------------------------------------------------------------ bulk (potato_ops.ops.bulk)

    def bulk_rebuild_users(
        self, user_ids: Sequence[str] | None, config: BulkConfig | None = None, **kw: Any
    ) -> BulkResult:
        """Rebuild many users (None: every user) in batches across workers; see ``potato_ops.ops.bulk``."""
        return bulk.bulk_rebuild_users(self.database, user_ids, config, **kw)

    def get_rebuild_progress(self, operation_id: str) -> Progress:
        """Return a bulk operation's progress from the ledger."""
        return bulk.get_rebuild_progress(self.database, operation_id)

    def resume_bulk_rebuild(self, operation_id: str, **kw: Any) -> BulkResult:
        """Finish an interrupted operation (only its users not yet completed), or unpause one.

        A paused operation whose workers still wait goes on with them (returned as it stands);
        one whose runner is gone is taken over and run here.
        """
        return bulk.resume_bulk_rebuild(self.database, operation_id, **kw)

    def pause_bulk_rebuild(self, operation_id: str) -> Progress:
        """Pause an operation: every worker on every host stops at its next batch boundary."""
        return bulk.pause_bulk_rebuild(self.database, operation_id)

    def get_throttle_episodes(self, operation_id: str) -> list[Episode]:
        """Return an operation's waits (paused, window, replica lag, load), oldest first."""
        return bulk.throttle_episodes(self.database, operation_id)

    def cancel_bulk_rebuild(self, operation_id: str) -> Progress:
        """Ask a running operation to stop at its next batch boundary."""
        return bulk.cancel_bulk_rebuild(self.database, operation_id)

    def list_operations(self, status: str | None = None, limit: int = 20) -> list[Progress]:
        """Return recent operations, newest first."""
        return bulk.list_operations(self.database, status, limit)

    def open_bulk_operation(self, user_ids: Sequence[str] | None, config: BulkConfig | None = None) -> str:
        """Write an operation for workers on any host to join; return its id (PostgreSQL only)."""
        return bulk.open_bulk_operation(self.database, user_ids, config)

    def join_bulk_operation(
        self,
        operation_id: str,
        *,
        max_workers: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> BulkResult:
        """Work on an open operation alongside its other workers until nothing is left."""
        return bulk.join_bulk_operation(
            self.database, operation_id, max_workers=max_workers, progress=progress
        )

    # ------------------------------------------------------------------ what the runbooks show

    def verify_backup(self, user_id: str, backup: Backup) -> None:
        """Raise BackupError unless the backup belongs to user_id and its checksum matches."""
        backups.verify_backup(user_id, backup)

    def get_backups_reporting_damage(self, user_id: str) -> tuple[list[Backup], list[BackupError]]:
        """Return the user's readable backups (newest first) and an error for each damaged one."""
        with self.database.read() as conn:
            return backups.fetch_backups_reporting_damage(conn, user_id)

    def repair_users(
        self, user_ids: Sequence[str], *, dry_run: bool, recent_days: int | None = None
    ) -> list[UserRepair]:
        """Return each user's repair (backup, rebuild, validation), in order, each user atomic."""
        return repair.repair_users(self.database, user_ids, dry_run=dry_run, recent_days=recent_days)

    def get_timezones(self, user_ids: Sequence[str]) -> dict[str, str]:
        """Return the timezone of each of the users that exists, by id."""
        return scan.timezones_of(self.database, user_ids)

    def get_run_length_counts(self, user_ids: Sequence[str] | None = None) -> dict[int, int]:
        """Return how many stored runs have each day_count (every user's, or the given users')."""
        return scan.run_length_counts(self.database, user_ids)

    def check_indexes(self) -> IndexCheck:
        """Return the database's keys on day_marks and runs."""
        return scan.index_check(self.database)

    def lay_out(self, *, distributed: bool) -> list[str]:
        """Lay the tables out for the database (Citus distribution when asked); return what was done."""
        return lay_out(self.engine, distributed=distributed)


__all__ = ["Storage"]
