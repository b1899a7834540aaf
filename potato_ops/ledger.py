"""The operations ledger: one row per bulk operation, one per user in it, and who runs it.

This module reads and writes the operation rows (``ops_operations``); the rest of the ledger
lives in modules of its own, and every name is also reachable from here:

* ``potato_ops.ledger_records``: the statuses and the plain records (pure).
* ``potato_ops.ledger_items``: the items, one per user (``ops_operation_items``), and their
  counts. Counts are never kept on the operation row: they are read from the items (``GROUP
  BY status``), so workers never contend on one row and counts cannot drift from the items.
* ``potato_ops.runner_liveness``: who runs an operation and whether that runner is alive,
  decided by something the runner holds (a PostgreSQL session lock; on SQLite its host, pid
  and process start time), never by heartbeat age alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, func, insert, literal, select, update

from potato_ops.errors import OperationNotFoundError
from potato_ops.ledger_items import (
    RATE_WINDOW_BATCHES,
    changed_items,
    failed_items,
    item_counts,
    pending_user_ids,
    recent_finishes,
    record_items,
    reopen_failed,
)
from potato_ops.ledger_records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    LIVE,
    PENDING,
    RUNNING,
    STATUSES,
    ItemCounts,
    ItemResult,
    ItemRow,
    OperationRow,
)
from potato_ops.queries import as_utc
from potato_ops.runner_liveness import (
    STALE_AFTER,
    Runner,
    _process_runner_alive,
    _process_start,
    new_runner,
    operation_lock,
    release_runner,
    runner_alive,
)
from potato_ops.schema import ops_operation_items, ops_operations, users

_items = ops_operation_items
_ops = ops_operations


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
    runner: Runner,
    now: datetime,
) -> int:
    """Write the operation (pending, owned by runner) and one pending item per user.

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
            runner_host=runner.host,
            runner_pid=runner.pid,
            runner_token=runner.token,
            cancel_requested=False,
        )
    )
    if user_ids is None:
        ranked = select(
            literal(operation_id),
            users.c.id,
            func.row_number().over(order_by=users.c.id),
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


def claim(
    conn: Connection, operation_id: str, runner: Runner, now: datetime, *, previous: str | None
) -> bool:
    """Make runner the operation's runner, status running; False if someone claimed it first.

    ``previous`` is the runner token the caller saw: the claim succeeds only if it is still
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
            runner_host=runner.host,
            runner_pid=runner.pid,
            runner_token=runner.token,
            cancel_requested=False,
            error=None,
        )
    ).rowcount
    return bool(done)


def heartbeat(conn: Connection, operation_id: str, runner: Runner, now: datetime) -> None:
    """Stamp the runner's heartbeat (what tells another host's runner is still at work)."""
    conn.execute(
        update(_ops)
        .where(_ops.c.id == operation_id, _ops.c.runner_token == runner.token)
        .values(heartbeat_at=now)
    )


def cancel_requested(conn: Connection, operation_id: str) -> bool:
    """Return True if someone asked the operation to stop."""
    flag = conn.execute(select(_ops.c.cancel_requested).where(_ops.c.id == operation_id)).scalar_one_or_none()
    return bool(flag)


def finish(
    conn: Connection,
    operation_id: str,
    runner: Runner,
    status: str,
    now: datetime,
    error: str | None = None,
) -> None:
    """Record the operation's final status (only the runner that owns it may)."""
    conn.execute(
        update(_ops)
        .where(_ops.c.id == operation_id, _ops.c.runner_token == runner.token)
        .values(status=status, heartbeat_at=now, finished_at=now, error=error)
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
    """Set the status of an operation whose runner is gone (as the ledger last saw it)."""
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


def request_cancel(conn: Connection, operation_id: str) -> None:
    """Ask the operation's runner to stop at its next batch boundary."""
    conn.execute(update(_ops).where(_ops.c.id == operation_id).values(cancel_requested=True))


__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "INTERRUPTED",
    "LIVE",
    "PENDING",
    "RATE_WINDOW_BATCHES",
    "RUNNING",
    "STALE_AFTER",
    "STATUSES",
    "ItemCounts",
    "ItemResult",
    "ItemRow",
    "OperationRow",
    "Runner",
    "_process_runner_alive",
    "_process_start",
    "cancel_requested",
    "changed_items",
    "claim",
    "create_operation",
    "failed_items",
    "fetch_operation",
    "finish",
    "heartbeat",
    "item_counts",
    "new_runner",
    "operation_lock",
    "pending_user_ids",
    "recent_finishes",
    "recent_operations",
    "record_items",
    "release_runner",
    "reopen_failed",
    "request_cancel",
    "runner_alive",
    "set_status",
]
