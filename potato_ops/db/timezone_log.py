"""Timezone changes: update a user's zone and keep the log that says who needs a rebuild."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, and_, exists, func, insert, select, update

from potato_ops.db.reads import fetch_user
from potato_ops.db.schema import ops_rebuild_history, ops_timezone_changes, users
from potato_ops.domain.dates import validate_timezone


def change_timezone(conn: Connection, user_id: str, timezone: str, now: datetime) -> bool:
    """Set the user's timezone and log the change; return False if it was already that zone.

    Never touches day_marks; only the active flags depend on the zone, and the next rebuild
    (or refresh_active_runs) puts them right.
    """
    validate_timezone(timezone)
    user = fetch_user(conn, user_id)
    if user.timezone == timezone:
        return False
    conn.execute(update(users).where(users.c.id == user_id).values(timezone=timezone))
    conn.execute(
        insert(ops_timezone_changes).values(
            user_id=user_id, old_timezone=user.timezone, new_timezone=timezone, changed_at=now
        )
    )
    return True


def users_with_pending_timezone_changes(conn: Connection, since: datetime | None = None) -> list[str]:
    """Return users whose latest timezone change came after their last successful rebuild.

    With ``since``, only changes made after that instant count.
    """
    tz = ops_timezone_changes
    h = ops_rebuild_history
    latest = select(tz.c.user_id, func.max(tz.c.changed_at).label("changed_at")).group_by(tz.c.user_id)
    if since is not None:
        latest = latest.where(tz.c.changed_at > since)
    changes = latest.subquery()
    rebuilt_after = exists().where(
        and_(
            h.c.user_id == changes.c.user_id,
            h.c.success.is_(True),
            h.c.kind != "restore",
            h.c.finished_at >= changes.c.changed_at,
        )
    )
    query = select(changes.c.user_id).where(~rebuilt_after).order_by(changes.c.user_id)
    return [r[0] for r in conn.execute(query)]
