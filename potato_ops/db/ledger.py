"""The operations ledger: one row per bulk operation, one per user in it, and who runs it.

This module reads and writes the operation rows (``ops_operations``) and the items, one per
user (``ops_operation_items``). The statuses and plain rows are in ``domain.operations``; who
owns an operation, and whether that owner is alive, is ``ops.bulk.ownership``.

Counts: an operation's items counted by status, with the sums of their figures, are kept in
``ops_operation_tallies`` by every writer of the items, in the writer's own transaction, as
differences (``TallyChange``), so ``item_counts`` reads a few tally rows, never the items
(a million users are a million items). The rows are keyed by slot as well as status: a batch
writes its differences to a slot of its own (its batch number), work outside batches (create,
reopen, catch-up) to ``OPERATION_SLOT``, and a count sums the slots (one per batch, about
users / batch size). Concurrent batches therefore never wait for each other on a shared
counter row, on PostgreSQL or Citus (where the commit, two-phase, is slow), and a batch's
slot row is only ever written under that batch's claim. Batches still write their tallies
after the fence, as the transaction's last statement, so the row is locked only for the
commit, and never before the fence takes its locks (no lock-order cycle with it).

An operation written before the tallies existed has no tally row: it is counted from its
items (``GROUP BY``) until ``backfill_tallies`` (at a takeover) tallies it once; writers
leave its tallies alone meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, exists, func, insert, literal, select, text, update

from potato_ops.db.distributed import is_distributed
from potato_ops.db.engine import chunks
from potato_ops.db.schema import ops_operation_items, ops_operation_tallies, ops_operations, users
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
_tallies = ops_operation_tallies
RATE_WINDOW_BATCHES = 50  # the ETA's rate is taken over this many most recent batches
# ... found among this many most recent finished items (50 batches of 500 users): the ETA
# reads at most these, whatever the operation's size.
RATE_WINDOW_ITEMS = 25_000
OPERATION_SLOT = -1  # tallies written outside any batch; its pending row marks a tallied operation


@dataclass(frozen=True)
class Tally:
    """Items of one status and the sums of their figures; or a difference of such counts."""

    users: int = 0
    changed: int = 0
    runs_deleted: int = 0
    runs_created: int = 0
    duration_ms: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.users + other.users,
            self.changed + other.changed,
            self.runs_deleted + other.runs_deleted,
            self.runs_created + other.runs_created,
            self.duration_ms + other.duration_ms,
        )

    def __neg__(self) -> Tally:
        return Tally(-self.users, -self.changed, -self.runs_deleted, -self.runs_created, -self.duration_ms)

    @property
    def zero(self) -> bool:
        """Return True if adding it changes nothing."""
        return self == Tally()


def _item_tally(changed: Any, runs_deleted: Any, runs_created: Any, duration_ms: Any) -> Tally:
    """One item as the counts see it (a NULL figure counts as 0, as SUM does)."""
    return Tally(
        1, 1 if changed else 0, int(runs_deleted or 0), int(runs_created or 0), float(duration_ms or 0.0)
    )


class TallyChange:
    """What one transaction did to an operation's counts: a difference per status."""

    def __init__(self) -> None:
        self.by_status: dict[str, Tally] = {}

    def add(self, status: str, tally: Tally) -> None:
        """Add tally to the status's difference."""
        self.by_status[status] = self.by_status.get(status, Tally()) + tally

    def move(self, status_from: str, status_to: str, before: Tally, after: Tally) -> None:
        """Items carrying ``before`` in status_from now carry ``after`` in status_to."""
        self.add(status_from, -before)
        self.add(status_to, after)


# Adds to a tally row, creating it at the first difference; only for a tallied operation
# (one whose marker row exists), so an operation older than the tallies is left to its items.
_ADD_TALLY = text(
    "INSERT INTO ops_operation_tallies "
    "(operation_id, slot, status, users, changed, runs_deleted, runs_created, duration_ms) "
    "SELECT :op, :slot, :st, CAST(:users AS BIGINT), CAST(:ch AS BIGINT), CAST(:rd AS BIGINT), "
    "CAST(:rc AS BIGINT), CAST(:ms AS FLOAT) "
    "WHERE EXISTS (SELECT 1 FROM ops_operation_tallies "
    "WHERE operation_id = :op AND slot = :marker_slot AND status = :marker_status) "
    "ON CONFLICT (operation_id, slot, status) DO UPDATE SET "
    "users = ops_operation_tallies.users + excluded.users, "
    "changed = ops_operation_tallies.changed + excluded.changed, "
    "runs_deleted = ops_operation_tallies.runs_deleted + excluded.runs_deleted, "
    "runs_created = ops_operation_tallies.runs_created + excluded.runs_created, "
    "duration_ms = ops_operation_tallies.duration_ms + excluded.duration_ms"
)


def add_tally_change(
    conn: Connection, operation_id: str, change: TallyChange, *, slot: int = OPERATION_SLOT
) -> None:
    """Apply a transaction's differences to the operation's tallies (in its transaction).

    ``slot``: the claimed batch's number for a batch's writes (no other worker writes that
    row), else ``OPERATION_SLOT``. Call it as the transaction's last statement, after the
    fence: the tally rows stay locked until the commit. Rows are written in status order, so
    two writers of one slot never wait for each other in a cycle.
    """
    rows = [
        {
            "op": operation_id,
            "slot": slot,
            "st": status,
            "users": t.users,
            "ch": t.changed,
            "rd": t.runs_deleted,
            "rc": t.runs_created,
            "ms": t.duration_ms,
            "marker_slot": OPERATION_SLOT,
            "marker_status": PENDING,
        }
        for status, t in sorted(change.by_status.items())
        if not t.zero
    ]
    if rows:
        conn.execute(_ADD_TALLY, rows)


def add_tallies(
    conn: Connection,
    operation_id: str,
    status_from: str,
    status_to: str,
    users: int,
    *,
    changed: int = 0,
    runs_deleted: int = 0,
    runs_created: int = 0,
    duration_ms: float = 0.0,
    carried: Tally | None = None,
    slot: int = OPERATION_SLOT,
) -> None:
    """Keep the tallies exact after a set-based change of ``users`` items' status.

    For a writer of ``ops_operation_items`` other than this module's (say one UPDATE moving a
    batch's items from pending to completed): call it in the same transaction, with the
    statement's rowcount as ``users`` and the sums of the figures the moved items now carry
    (``changed``: how many have changed true; ``runs_deleted``, ``runs_created``,
    ``duration_ms``: the sums, NULL counted as 0). ``carried`` is what the items carried
    before, in status_from (None: no figures, as ``create_operation`` writes pending items;
    items reopened by ``reopen_failed`` keep their failed figures, so a writer that may
    move those reads their sums first). ``slot``: the claimed batch's number when the change
    belongs to a batch, so that concurrent batches never share a row; and, as for
    ``add_tally_change``, call it after the fence, as the last statement before commit.
    """
    change = TallyChange()
    change.move(
        status_from,
        status_to,
        carried if carried is not None else Tally(users),
        Tally(users, changed, runs_deleted, runs_created, duration_ms),
    )
    add_tally_change(conn, operation_id, change, slot=slot)


def _mark_tallied(conn: Connection, operation_id: str, pending: Tally) -> None:
    """Write the operation's marker row (slot OPERATION_SLOT, pending) holding ``pending``."""
    conn.execute(
        insert(_tallies).values(
            operation_id=operation_id,
            slot=OPERATION_SLOT,
            status=PENDING,
            users=pending.users,
            changed=pending.changed,
            runs_deleted=pending.runs_deleted,
            runs_created=pending.runs_created,
            duration_ms=pending.duration_ms,
        )
    )


def _is_tallied(conn: Connection, operation_id: str) -> bool:
    marker = conn.execute(
        select(_tallies.c.users).where(
            _tallies.c.operation_id == operation_id,
            _tallies.c.slot == OPERATION_SLOT,
            _tallies.c.status == PENDING,
        )
    ).first()
    return marker is not None


def _tallies_from_items(conn: Connection, operation_id: str, *conditions: Any) -> dict[str, Tally]:
    """Count the operation's items by status (reads them all: only for once-per-operation work)."""
    rows = conn.execute(
        select(
            _items.c.status,
            func.count(),
            func.coalesce(func.sum(case((_items.c.changed, 1), else_=0)), 0),
            func.coalesce(func.sum(_items.c.runs_deleted), 0),
            func.coalesce(func.sum(_items.c.runs_created), 0),
            func.coalesce(func.sum(_items.c.duration_ms), 0.0),
        )
        .where(_items.c.operation_id == operation_id, *conditions)
        .group_by(_items.c.status)
    ).all()
    return {st: Tally(int(n), int(ch), int(rd), int(rc), float(ms)) for st, n, ch, rd, rc, ms in rows}


def backfill_tallies(conn: Connection, operation_id: str) -> bool:
    """Tally an operation written before the tallies existed, from its items; True if done.

    Reads every item once. Call it where no other writer of the operation can commit: in
    ``resume``'s takeover transaction, after the epoch bump that fences out every earlier
    worker (whose writes, made before the marker, left the tallies alone).
    """
    if _is_tallied(conn, operation_id):
        return False
    counted = _tallies_from_items(conn, operation_id)
    _mark_tallied(conn, operation_id, counted.pop(PENDING, Tally()))
    change = TallyChange()
    for status, tally in counted.items():
        change.add(status, tally)
    add_tally_change(conn, operation_id, change)
    return True


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
    not_found = 0  # ids of no existing user: failed at once
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
        not_found = conn.execute(
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
        ).rowcount
    _mark_tallied(conn, operation_id, Tally(int(total)))
    if not_found:
        add_tallies(conn, operation_id, PENDING, FAILED, int(not_found))
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


def record_items(
    conn: Connection, operation_id: str, results: Sequence[ItemResult], now: datetime
) -> TallyChange:
    """Write the users' outcomes (one statement, executed for each user); return the counts' change.

    The items' previous status and figures are read first (just these users), so the change
    is exact whatever they were (pending, or failed before a retry). The caller applies it
    with ``add_tally_change`` in the same transaction, after its fence. Only the holder of
    the users' batch (or of the operation, for catch-up) writes them, and a holder that lost
    its claim rolls back at the fence, so what was read cannot have changed by the commit.
    """
    change = TallyChange()
    if not results:
        return change
    before: dict[str, tuple[str, Tally]] = {}
    for part in chunks([r.user_id for r in results]):
        for uid, st, ch, rd, rc, ms in conn.execute(
            select(
                _items.c.user_id,
                _items.c.status,
                _items.c.changed,
                _items.c.runs_deleted,
                _items.c.runs_created,
                _items.c.duration_ms,
            ).where(_items.c.operation_id == operation_id, _items.c.user_id.in_(part))
        ):
            before[uid] = (st, _item_tally(ch, rd, rc, ms))
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
    for r in results:
        if r.user_id in before:  # an id with no item was not written
            status, tally = before[r.user_id]
            after = _item_tally(r.changed, r.runs_deleted, r.runs_created, r.duration_ms)
            change.move(status, r.status, tally, after)
    return change


def reopen_failed(conn: Connection, operation_id: str) -> int:
    """Put the operation's failed items back to pending (to retry them); return how many.

    The items keep their figures (the retry overwrites them): the tallies move them from
    failed to pending. Reads the failed items only (by the status index).
    """
    carried = _tallies_from_items(conn, operation_id, _items.c.status == FAILED).get(FAILED, Tally())
    reopened = conn.execute(
        update(_items)
        .where(_items.c.operation_id == operation_id, _items.c.status == FAILED)
        .values(status=PENDING)
    ).rowcount
    change = TallyChange()
    change.move(FAILED, PENDING, carried, carried)
    add_tally_change(conn, operation_id, change)
    return int(reopened)


def _counts(by_status: Mapping[str, Tally]) -> ItemCounts:
    every = sum(by_status.values(), Tally())
    return ItemCounts(
        total=every.users,
        pending=by_status.get(PENDING, Tally()).users,
        completed=by_status.get(COMPLETED, Tally()).users,
        failed=by_status.get(FAILED, Tally()).users,
        changed=every.changed,
        runs_deleted=every.runs_deleted,
        runs_created=every.runs_created,
        duration_ms=every.duration_ms,
    )


def item_counts(conn: Connection, operation_id: str) -> ItemCounts:
    """Return the operation's items counted by status, from its tallies.

    Reads the operation's tally rows (a few per batch), never its items; an operation
    written before the tallies existed (no tally row) is counted from its items.
    """
    rows = conn.execute(
        select(
            _tallies.c.status,
            func.sum(_tallies.c.users),
            func.sum(_tallies.c.changed),
            func.sum(_tallies.c.runs_deleted),
            func.sum(_tallies.c.runs_created),
            func.sum(_tallies.c.duration_ms),
        )
        .where(_tallies.c.operation_id == operation_id)
        .group_by(_tallies.c.status)
    ).all()
    if not rows:
        return _counts(_tallies_from_items(conn, operation_id))
    return _counts(
        {st: Tally(int(n), int(ch), int(rd), int(rc), float(ms)) for st, n, ch, rd, rc, ms in rows}
    )


def recent_finishes(conn: Connection, operation_id: str) -> list[tuple[datetime, int]]:
    """Return (finished_at, users) of the most recent batches, oldest first, for the ETA.

    Reads at most RATE_WINDOW_ITEMS items, newest first along ``ix_ops_items_finished``; the
    oldest batch among them, which the window may cut, is counted again on its own.
    """
    latest = (
        select(_items.c.finished_at)
        .where(_items.c.operation_id == operation_id, _items.c.finished_at.is_not(None))
        .order_by(_items.c.finished_at.desc())
        .limit(RATE_WINDOW_ITEMS)
        .subquery()
    )
    rows = [
        (at, int(n))
        for at, n in conn.execute(
            select(latest.c.finished_at, func.count())
            .group_by(latest.c.finished_at)
            .order_by(latest.c.finished_at.desc())
            .limit(RATE_WINDOW_BATCHES)
        ).all()
    ]
    if rows and sum(n for _, n in rows) >= RATE_WINDOW_ITEMS:  # the window ended inside the oldest
        oldest = rows[-1][0]
        whole = conn.execute(
            select(func.count())
            .select_from(_items)
            .where(_items.c.operation_id == operation_id, _items.c.finished_at == oldest)
        ).scalar_one()
        rows[-1] = (oldest, int(whole))
    return [(as_utc(at), n) for at, n in reversed(rows)]


def _item_rows(
    conn: Connection, operation_id: str, *conditions: Any, limit: int | None = None
) -> list[ItemRow]:
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
        .limit(limit)
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


def failed_items(conn: Connection, operation_id: str, limit: int | None = None) -> list[ItemRow]:
    """Return the operation's failed users with their errors, in order (the first ``limit``)."""
    return _item_rows(conn, operation_id, _items.c.status == FAILED, limit=limit)


def changed_items(conn: Connection, operation_id: str, limit: int | None = None) -> list[ItemRow]:
    """Return the users the operation changed (or, dry, would change), in order (the first ``limit``)."""
    changed = and_(_items.c.status == COMPLETED, _items.c.changed.is_(True))
    return _item_rows(conn, operation_id, changed, limit=limit)
