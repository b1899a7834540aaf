"""Backups and restores of one user's runs, orphan removal and backup retention."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from potato_ops.db import backups, history
from potato_ops.db.engine import lock_users
from potato_ops.db.reads import fetch_runs, fetch_user, fetch_users
from potato_ops.db.run_writes import delete_runs_of
from potato_ops.domain.dates import local_today
from potato_ops.domain.models import Backup, Run
from potato_ops.errors import BackupError
from potato_ops.ops.database import Database, Rollback


def backup_user_runs(db: Database, user_id: str) -> Backup:
    """Persist a checksummed copy of the user's runs and return it."""
    with db.write() as conn:
        fetch_user(conn, user_id)
        lock_users(conn, [user_id])
        current = fetch_runs(conn, [user_id]).get(user_id, [])
        return backups.take_backups(conn, [(user_id, current)], db.now(), reason="manual")[0]


def restore_user_runs(
    db: Database, user_id: str, backup: Backup | int, *, dry_run: bool = False
) -> list[Run]:
    """Replace the user's runs with the backup's, atomically; return the restored runs.

    Refuses (BackupError, nothing changed) a backup of another user or a bad checksum.
    Active flags are set by the rule at restore time. A dry run restores in a transaction
    it rolls back, so the runs it returns are the ones the database would hold.
    """
    if not isinstance(backup, Backup):
        with db.read() as conn:
            backup = backups.fetch_backup(conn, int(backup), user_id)
    with db.read() as conn:
        user = fetch_user(conn, user_id)
    backups.verify_backup(user_id, backup)
    started = db.now()
    t0 = time.perf_counter()
    restored: list[Run] = []
    try:
        with db.write() as conn:
            lock_users(conn, [user_id])
            deleted = backups.replace_runs(conn, user_id, backup.runs, local_today(user.timezone, started))
            restored = fetch_runs(conn, [user_id]).get(user_id, [])
            if dry_run:
                raise Rollback
            history.record_history(
                conn,
                [
                    history.HistoryEntry(
                        operation_id=uuid.uuid4().hex,
                        user_id=user_id,
                        kind=history.RESTORE,
                        started_at=started,
                        finished_at=db.now(),
                        duration_ms=(time.perf_counter() - t0) * 1000,
                        success=True,
                        runs_deleted=deleted,
                        runs_created=len(backup.runs),
                    )
                ],
            )
    except Rollback:
        pass
    return restored


def remove_orphan_runs(db: Database, owner_ids: Sequence[str], *, dry_run: bool = False) -> dict[str, Backup]:
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
        with db.write() as conn:
            lock_users(conn, ids)
            existing = {u.id for u in fetch_users(conn, ids)}
            stored = fetch_runs(conn, ids)
            orphans = [uid for uid in ids if uid not in existing and stored.get(uid)]
            made = [backups.make_backup(uid, stored[uid], db.now(), reason="orphan") for uid in orphans]
            if dry_run:
                taken = {b.user_id: b for b in made}
                raise Rollback
            taken = {b.user_id: b for b in backups.save_backups(conn, made)}
            if orphans:
                delete_runs_of(conn, orphans)
    except Rollback:
        pass
    return taken


def prune_backups(db: Database, older_than: timedelta | datetime, keep_latest: int = 1) -> int:
    """Delete backups older than the age (or instant), keeping each user's newest ones."""
    if keep_latest < 0:
        raise BackupError("keep_latest must be 0 or more")
    cutoff = db.now() - older_than if isinstance(older_than, timedelta) else older_than
    with db.write() as conn:
        return backups.prune_backups(conn, cutoff, keep_latest)
