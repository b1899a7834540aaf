"""The error-recovery repairs of the playbook's scenarios; each user's repair is one transaction.

A repair is the engine's rebuild with its backup: backup, rebuild and validation commit
together. When validation fails, the transaction rolls back, which puts the user's runs back
exactly as they were backed up: the playbook's "restore from backup", with no moment in which
another reader sees half-repaired runs and no second transaction that could fail on its own.
A dry run computes the same and rolls back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from potato_ops.db.reads import fetch_user
from potato_ops.domain.dates import local_today
from potato_ops.domain.models import RebuildResult
from potato_ops.errors import UserNotFoundError
from potato_ops.ops.database import Database
from potato_ops.ops.rebuild import rebuild_user_runs


class RepairStatus(StrEnum):
    """How one user's repair ended."""

    REPAIRED = "repaired"  # runs or flags changed and validated (a dry run: would be)
    UNCHANGED = "unchanged"  # the runs were already what the marks give
    ROLLED_BACK = "rolled back"  # the rebuild did not validate: nothing changed
    NO_USER = "no user"  # the id is not a user's: there is nothing to rebuild from


@dataclass(frozen=True)
class UserRepair:
    """One user's repair: its status and the rebuild's result (None when there is no user)."""

    user_id: str
    status: RepairStatus
    result: RebuildResult | None = None
    error: str = ""


def _status(result: RebuildResult) -> RepairStatus:
    if not result.success:
        return RepairStatus.ROLLED_BACK
    if result.runs_deleted or result.runs_created or result.active_flags_changed:
        return RepairStatus.REPAIRED
    return RepairStatus.UNCHANGED


def repair_user(db: Database, user_id: str, *, dry_run: bool, recent_days: int | None = None) -> UserRepair:
    """Return the repair of one user: a rebuild with its backup, in one transaction.

    With ``recent_days``, only the runs touching the user's last ``recent_days`` days up to
    their local today are rebuilt: the playbook's answer to a user whose rebuilds are slow.
    """
    try:
        if recent_days is None:
            result = rebuild_user_runs(db, user_id, backup=True, dry_run=dry_run)
        else:
            with db.read() as conn:
                user = fetch_user(conn, user_id)
            today = local_today(user.timezone, db.now())
            start = today - timedelta(days=recent_days)
            result = rebuild_user_runs(db, user_id, start, today, backup=True, dry_run=dry_run)
    except UserNotFoundError as exc:
        return UserRepair(user_id, RepairStatus.NO_USER, error=str(exc))
    return UserRepair(user_id, _status(result), result)


def repair_users(
    db: Database, user_ids: Sequence[str], *, dry_run: bool, recent_days: int | None = None
) -> list[UserRepair]:
    """Return the repair of each user, in order; one user's failure leaves the others alone."""
    return [repair_user(db, uid, dry_run=dry_run, recent_days=recent_days) for uid in user_ids]
