"""The operations ledger: one row per bulk operation, one per user in it, and who runs it.

Counts are never kept on the operation row: they are read from the items (``GROUP BY
status``), so workers never contend on one row and counts cannot drift from the items.

Whether an operation's runner is alive is decided by something the runner holds, never by
heartbeat age alone:

* PostgreSQL: the runner holds a session-level advisory lock keyed by the operation id on a
  connection of its own for the run's life; the server drops it the moment the process dies.
* SQLite: the runner records its host, pid and a token holding the process's start time (from
  ``/proc``, so a reused pid is not mistaken for it). On another host only the heartbeat can
  tell, so there a runner is taken for gone once its heartbeat is ``STALE_AFTER`` old.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    update,
)

from potato_ops.db import LOCK_NS_OPERATION, is_postgres
from potato_ops.errors import OperationNotFoundError
from potato_ops.queries import as_utc
from potato_ops.schema import ops_operation_items, ops_operations, users

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED)
LIVE = (PENDING, RUNNING)  # statuses that claim a runner is at work

STALE_AFTER = timedelta(minutes=10)  # heartbeat age after which another host's runner is gone
RATE_WINDOW_BATCHES = 50  # the ETA's rate is taken over this many most recent batches

_items = ops_operation_items
_ops = ops_operations


# ---------------------------------------------------------------------------- runners


@dataclass(frozen=True)
class Runner:
    """Who runs an operation: host, process id, and a token unique to this run."""

    host: str
    pid: int
    token: str  # "<process start time>/<random>"


_live_tokens: set[str] = set()  # runners alive in this process
_live_lock = threading.Lock()


def _process_start(pid: int) -> str | None:
    """Return the process's start time (clock ticks since boot), or None if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its exit status remains
        return None
    return fields[19]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_runner() -> Runner:
    """Return a runner identity for this process, registered as alive until released."""
    pid = os.getpid()
    token = f"{_process_start(pid) or '-'}/{uuid.uuid4().hex}"
    with _live_lock:
        _live_tokens.add(token)
    return Runner(socket.gethostname(), pid, token)


def release_runner(runner: Runner) -> None:
    """Forget a runner of this process (its run has ended)."""
    with _live_lock:
        _live_tokens.discard(runner.token)


def _process_runner_alive(op: OperationRow, now: datetime) -> bool:
    """Return True if the runner recorded on op (SQLite's way) is still at work."""
    if op.runner_pid is None or op.runner_token is None:
        return False
    if op.runner_host != socket.gethostname():
        beat = op.heartbeat_at or op.started_at or op.created_at
        return now - beat < STALE_AFTER
    if op.runner_pid == os.getpid():
        with _live_lock:
            return op.runner_token in _live_tokens
    started = op.runner_token.split("/", 1)[0]
    if started == "-" or not Path("/proc").is_dir():
        return _pid_running(op.runner_pid)
    return _process_start(op.runner_pid) == started


@contextmanager
def operation_lock(engine: Engine, operation_id: str) -> Iterator[bool]:
    """Hold the operation's runner lock while the block runs; yield False if another holds it.

    On PostgreSQL a session-level advisory lock on a connection of its own, released (or
    dropped by the server with the process) at the end; on SQLite always True (the runner's
    pid and token in the ledger say who runs it).
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn:
        got = bool(
            conn.execute(
                text("SELECT pg_try_advisory_lock(:ns, hashtext(:op))"),
                {"ns": LOCK_NS_OPERATION, "op": operation_id},
            ).scalar_one()
        )
        conn.commit()  # keep no transaction open: the lock is session-level
        try:
            yield got
        finally:
            if got:
                conn.execute(
                    text("SELECT pg_advisory_unlock(:ns, hashtext(:op))"),
                    {"ns": LOCK_NS_OPERATION, "op": operation_id},
                )
                conn.commit()


def _pg_runner_alive(conn: Connection, operation_id: str) -> bool:
    """Return True if some session holds the operation's runner lock (looked up, not taken)."""
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid = CAST(:ns AS oid) "
                "AND objid = CAST(CAST(hashtext(:op) AS bigint) & 4294967295 AS oid) "
                "AND objsubid = 2 AND granted)"
            ),
            {"ns": LOCK_NS_OPERATION, "op": operation_id},
        ).scalar_one()
    )


def runner_alive(conn: Connection, op: OperationRow, now: datetime) -> bool:
    """Return True if the operation's runner is still at work."""
    if is_postgres(conn):
        return _pg_runner_alive(conn, op.id)
    return _process_runner_alive(op, now)


# ---------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class OperationRow:
    """One row of ``ops_operations``."""

    id: str
    kind: str
    status: str
    dry_run: bool
    config: dict[str, Any]
    total_users: int
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    runner_host: str | None
    runner_pid: int | None
    runner_token: str | None
    cancel_requested: bool
    error: str | None


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


# ---------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ItemResult:
    """What happened to one user of an operation."""

    user_id: str
    status: str  # completed | failed
    tries: int
    changed: bool = False
    runs_deleted: int = 0
    runs_created: int = 0
    active_flags_changed: int = 0
    duration_ms: float = 0.0
    error_class: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class ItemCounts:
    """The items of an operation, counted by status, with sums of what they did."""

    total: int = 0
    pending: int = 0
    completed: int = 0
    failed: int = 0
    changed: int = 0
    runs_deleted: int = 0
    runs_created: int = 0
    duration_ms: float = 0.0  # sum over processed users

    @property
    def processed(self) -> int:
        """Return how many users were completed or failed."""
        return self.completed + self.failed


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


@dataclass(frozen=True)
class ItemRow:
    """One processed item, as the result lists report it."""

    user_id: str
    status: str
    attempts: int
    changed: bool
    runs_deleted: int
    runs_created: int
    active_flags_changed: int
    error_class: str | None
    error_message: str | None


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
