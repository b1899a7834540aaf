"""The ledger's items: one row per user of a bulk operation, written and counted.

Counts are never kept on the operation row: they are read from the items (``GROUP BY
status``), so workers never contend on one row and counts cannot drift from the items.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, select, update

from potato_ops.ledger_records import COMPLETED, FAILED, PENDING, ItemCounts, ItemResult, ItemRow
from potato_ops.queries import as_utc
from potato_ops.schema import ops_operation_items

RATE_WINDOW_BATCHES = 50  # the ETA's rate is taken over this many most recent batches

_items = ops_operation_items


def record_items(conn: Connection, operation_id: str, results: Sequence[ItemResult], now: datetime) -> None:
    """Write the users' outcomes (one statement, executed for each user)."""
    if not results:
        return
    stmt = (
        update(_items)
        .where(
            _items.c.operation_id == bindparam("op"),
            _items.c.user_id == bindparam("uid"),
        )
        .values(
            status=bindparam("st"),
            attempts=_items.c.attempts + bindparam("tries"),
            changed=bindparam("ch"),
            runs_deleted=bindparam("rd"),
            runs_created=bindparam("rc"),
            active_flags_changed=bindparam("af"),
            duration_ms=bindparam("ms"),
            error_class=bindparam("ec"),
            error_message=bindparam("em"),
            finished_at=bindparam("at"),
        )
    )
    conn.execute(
        stmt,
        [
            {
                "op": operation_id,
                "uid": r.user_id,
                "st": r.status,
                "tries": r.tries,
                "ch": r.changed,
                "rd": r.runs_deleted,
                "rc": r.runs_created,
                "af": r.active_flags_changed,
                "ms": r.duration_ms,
                "ec": r.error_class,
                "em": r.error_message,
                "at": now,
            }
            for r in results
        ],
    )


def reopen_failed(conn: Connection, operation_id: str) -> int:
    """Put the operation's failed items back to pending (to retry them); return how many."""
    return int(
        conn.execute(
            update(_items)
            .where(_items.c.operation_id == operation_id, _items.c.status == FAILED)
            .values(status=PENDING)
        ).rowcount
    )


def pending_user_ids(conn: Connection, operation_id: str) -> list[str]:
    """Return the ids of the operation's pending users, in their stable order."""
    return list(
        conn.execute(
            select(_items.c.user_id)
            .where(_items.c.operation_id == operation_id, _items.c.status == PENDING)
            .order_by(_items.c.position)
        ).scalars()
    )


def item_counts(conn: Connection, operation_id: str) -> ItemCounts:
    """Return the operation's items counted by status (one GROUP BY)."""
    rows = conn.execute(
        select(
            _items.c.status,
            func.count(),
            func.coalesce(func.sum(case((_items.c.changed, 1), else_=0)), 0),
            func.coalesce(func.sum(_items.c.runs_deleted), 0),
            func.coalesce(func.sum(_items.c.runs_created), 0),
            func.coalesce(func.sum(_items.c.duration_ms), 0.0),
        )
        .where(_items.c.operation_id == operation_id)
        .group_by(_items.c.status)
    ).all()
    by: dict[str, int] = {}
    changed = deleted = created = 0
    duration = 0.0
    for status, n, ch, rd, rc, ms in rows:
        by[status] = int(n)
        changed += int(ch)
        deleted += int(rd)
        created += int(rc)
        duration += float(ms)
    return ItemCounts(
        total=sum(by.values()),
        pending=by.get(PENDING, 0),
        completed=by.get(COMPLETED, 0),
        failed=by.get(FAILED, 0),
        changed=changed,
        runs_deleted=deleted,
        runs_created=created,
        duration_ms=duration,
    )


def recent_finishes(conn: Connection, operation_id: str) -> list[tuple[datetime, int]]:
    """Return (finished_at, users) of the most recent batches, oldest first, for the ETA."""
    rows = conn.execute(
        select(_items.c.finished_at, func.count())
        .where(_items.c.operation_id == operation_id, _items.c.finished_at.is_not(None))
        .group_by(_items.c.finished_at)
        .order_by(_items.c.finished_at.desc())
        .limit(RATE_WINDOW_BATCHES)
    ).all()
    return [(as_utc(at), int(n)) for at, n in reversed(rows)]


def _item_rows(conn: Connection, operation_id: str, *conditions: Any) -> list[ItemRow]:
    query = (
        select(
            _items.c.user_id,
            _items.c.status,
            _items.c.attempts,
            _items.c.changed,
            _items.c.runs_deleted,
            _items.c.runs_created,
            _items.c.active_flags_changed,
            _items.c.error_class,
            _items.c.error_message,
        )
        .where(_items.c.operation_id == operation_id, *conditions)
        .order_by(_items.c.position)
    )
    return [
        ItemRow(
            uid,
            st,
            int(att),
            bool(ch),
            int(rd or 0),
            int(rc or 0),
            int(af or 0),
            ec,
            em,
        )
        for uid, st, att, ch, rd, rc, af, ec, em in conn.execute(query).all()
    ]


def failed_items(conn: Connection, operation_id: str) -> list[ItemRow]:
    """Return the operation's failed users with their errors, in order."""
    return _item_rows(conn, operation_id, _items.c.status == FAILED)


def changed_items(conn: Connection, operation_id: str) -> list[ItemRow]:
    """Return the users the operation changed (or, dry, would change), in order."""
    return _item_rows(conn, operation_id, and_(_items.c.status == COMPLETED, _items.c.changed.is_(True)))
