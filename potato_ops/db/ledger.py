"""The operations ledger: one row per bulk operation, one per user in it, and who runs it.

This module reads and writes the operation rows (``ops_operations``) and the items, one per
user (``ops_operation_items``). Counts are never kept on the operation row: they are read from
the items (``GROUP BY status``), so workers never contend on one row and counts cannot drift
from the items. The statuses and plain rows are in ``domain.operations``; who owns an operation, and whether
that owner is alive, is ``ops.bulk.ownership``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, exists, func, insert, literal, select, update

from potato_ops.db.distributed import is_distributed
from potato_ops.db.schema import ops_operation_items, ops_operations, users
from potato_ops.domain.dates import as_utc
from potato_ops.domain.operations import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    LIVE,
    PENDING,
    RUNNING,
    ItemCounts,
    ItemResult,
    ItemRow,
    OperationRow,
    Owner,
)
from potato_ops.errors import OperationNotFoundError

_items = ops_operation_items
_ops = ops_operations
RATE_WINDOW_BATCHES = 50  # the ETA's rate is taken over this many most recent batches


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _operation(row: Any) -> OperationRow:
    return OperationRow(
        id=row.id,
        kind=row.kind,
        status=row.status,
        dry_run=bool(row.dry_run),
        config=json.loads(row.config),
        total_users=int(row.total_users),
        created_at=as_utc(row.created_at),
        started_at=_utc(row.started_at),
        heartbeat_at=_utc(row.heartbeat_at),
        finished_at=_utc(row.finished_at),
        runner_host=row.runner_host,
        runner_pid=row.runner_pid,
        runner_token=row.runner_token,
        cancel_requested=bool(row.cancel_requested),
        error=row.error,
    )


def create_operation(
    conn: Connection,
    operation_id: str,
    *,
    kind: str,
    dry_run: bool,
    config: dict[str, Any],
    user_ids: Sequence[str] | None,
    owner: Owner,
    now: datetime,
) -> int:
    """Write the operation (pending, owned by owner) and one pending item per user.

    ``user_ids`` None means every user, listed set-based. Duplicates are dropped, first one
    kept. Ids of no existing user get a failed item (UserNotFoundError) at once. Returns the
    number of items.
    """
    conn.execute(
        insert(_ops).values(
            id=operation_id,
            kind=kind,
            status=PENDING,
            dry_run=dry_run,
            config=json.dumps(config, sort_keys=True),
            total_users=0,
            created_at=now,
            heartbeat_at=now,
            runner_host=owner.host,
            runner_pid=owner.pid,
            runner_token=owner.token,
            cancel_requested=False,
        )
    )
    if user_ids is None:
        # On Citus, users in the order of their shards: a batch then falls on one shard group
        # (one worker, no two-phase commit) instead of spreading over every shard.
        order = [func.worker_hash(users.c.id), users.c.id] if is_distributed(conn) else [users.c.id]
        ranked = select(
            literal(operation_id),
            users.c.id,
            func.row_number().over(order_by=order),
            literal(PENDING),
            literal(0),
        )
        conn.execute(
            insert(_items).from_select(["operation_id", "user_id", "position", "status", "attempts"], ranked)
        )
        total = conn.execute(
            select(func.count()).select_from(_items).where(_items.c.operation_id == operation_id)
        ).scalar_one()
    else:
        unique = list(dict.fromkeys(str(u) for u in user_ids))
        for start in range(0, len(unique), 5000):
            conn.execute(
                insert(_items),
                [
                    {
                        "operation_id": operation_id,
                        "user_id": uid,
                        "position": start + i + 1,
                        "status": PENDING,
                        "attempts": 0,
                    }
                    for i, uid in enumerate(unique[start : start + 5000])
                ],
            )
        total = len(unique)
        missing = ~exists().where(users.c.id == _items.c.user_id)
        conn.execute(
            update(_items)
            .where(_items.c.operation_id == operation_id, _items.c.status == PENDING, missing)
            .values(
                status=FAILED,
                attempts=1,
                changed=False,
                error_class="UserNotFoundError",
                error_message="no user with this id",
                finished_at=now,
            )
        )
    conn.execute(update(_ops).where(_ops.c.id == operation_id).values(total_users=total))
    return int(total)


def fetch_operation(conn: Connection, operation_id: str) -> OperationRow:
    """Return the operation's row, or raise OperationNotFoundError."""
    row = conn.execute(select(_ops).where(_ops.c.id == operation_id)).first()
    if row is None:
        raise OperationNotFoundError(f"no bulk operation with id {operation_id!r}")
    return _operation(row)


def recent_operations(conn: Connection, status: str | None, limit: int) -> list[OperationRow]:
    """Return the most recent operations (optionally of one stored status), newest first."""
    query = select(_ops).order_by(_ops.c.created_at.desc(), _ops.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(_ops.c.status == status)
    return [_operation(r) for r in conn.execute(query)]


def claim(conn: Connection, operation_id: str, owner: Owner, now: datetime, *, previous: str | None) -> bool:
    """Make owner the operation's owner, status running; False if someone claimed it first.

    ``previous`` is the owner token the caller saw: the claim succeeds only if it is still
    the one recorded, so two processes resuming at once cannot both win.
    """
    cond = _ops.c.runner_token.is_(None) if previous is None else _ops.c.runner_token == previous
    done = conn.execute(
        update(_ops)
        .where(_ops.c.id == operation_id, cond)
        .values(
            status=RUNNING,
            started_at=func.coalesce(_ops.c.started_at, now),
            heartbeat_at=now,
            finished_at=None,
            runner_host=owner.host,
            runner_pid=owner.pid,
            runner_token=owner.token,
            cancel_requested=False,
            error=None,
        )
    ).rowcount
    return bool(done)


def heartbeat(conn: Connection, operation_id: str, owner: Owner, now: datetime) -> None:
    """Stamp the owner's heartbeat (what tells another host's owner is still at work)."""
    conn.execute(
        update(_ops)
        .where(_ops.c.id == operation_id, _ops.c.runner_token == owner.token)
        .values(heartbeat_at=now)
    )


def cancel_requested(conn: Connection, operation_id: str) -> bool:
    """Return True if someone asked the operation to stop."""
    flag = conn.execute(select(_ops.c.cancel_requested).where(_ops.c.id == operation_id)).scalar_one_or_none()
    return bool(flag)


def finish(
    conn: Connection,
    operation_id: str,
    owner: Owner | None,
    status: str,
    now: datetime,
    error: str | None = None,
    *,
    epoch: int | None = None,
) -> None:
    """Record the operation's final status.

    Only the operation's owner may (``owner``), or, with ``owner`` None, any worker of the
    operation's current ``epoch`` while it is still live; an owner fenced out by a takeover
    writes nothing.
    """
    conds = [_ops.c.id == operation_id]
    if owner is not None:
        conds.append(_ops.c.runner_token == owner.token)
    else:
        conds.append(_ops.c.status.in_(LIVE))
    if epoch is not None:
        conds.append(_ops.c.epoch == epoch)
    conn.execute(
        update(_ops).where(*conds).values(status=status, heartbeat_at=now, finished_at=now, error=error)
    )


def set_status(
    conn: Connection,
    operation_id: str,
    status: str,
    now: datetime,
    *,
    expect_token: str | None,
    error: str | None = None,
) -> bool:
    """Set the status of an operation whose owner is gone (as the ledger last saw it)."""
    cond = _ops.c.runner_token.is_(None) if expect_token is None else _ops.c.runner_token == expect_token
    values: dict[str, Any] = {"status": status}
    if status in (CANCELLED, COMPLETED, FAILED):
        values["finished_at"] = now
    if error is not None:
        values["error"] = error
    return bool(
        conn.execute(
            update(_ops).where(_ops.c.id == operation_id, _ops.c.status.in_(LIVE), cond).values(**values)
        ).rowcount
    )


def join(conn: Connection, operation_id: str, now: datetime) -> int | None:
    """Mark a live or interrupted operation running (a worker joined); return its epoch.

    None if the operation ended or a cancel was asked for.
    """
    done = conn.execute(
        update(_ops)
        .where(
            _ops.c.id == operation_id,
            _ops.c.status.in_((*LIVE, INTERRUPTED)),
            _ops.c.cancel_requested.is_(False),
        )
        .values(status=RUNNING, started_at=func.coalesce(_ops.c.started_at, now))
    ).rowcount
    if not done:
        return None
    return int(conn.execute(select(_ops.c.epoch).where(_ops.c.id == operation_id)).scalar_one())


def request_cancel(conn: Connection, operation_id: str) -> None:
    """Ask the operation's owner to stop at its next batch boundary."""
    conn.execute(update(_ops).where(_ops.c.id == operation_id).values(cancel_requested=True))


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
