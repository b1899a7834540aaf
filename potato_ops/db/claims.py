"""Batches that workers claim, with leases, and the fence every batch commits behind.

An operation's pending items are cut into batches by position (batch n: positions
``n*size+1 .. (n+1)*size``). Any worker of the operation (a thread of the owner that started
it, or of ``potato-ops bulk-worker`` on another host) claims the next batch nobody holds: on
PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so two claimers never take the same batch, and on
SQLite behind the database's single write lock. A claim is a lease: a worker that dies holding
one leaves it until ``expires_at``, then any worker takes it over.

The fence: a batch's writes commit only if, inside that same transaction, the operation's
epoch is still the one the worker joined under (a takeover by ``resume`` bumps it) and the
batch's claim is still the worker's own (locked ``FOR UPDATE`` until commit, so it cannot be
taken over between the check and the commit). A worker that lost the operation or the claim
therefore rolls back instead of writing twice, and the ledger counts only what committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, select, text, update

from potato_ops.db.schema import ops_operation_batches, ops_operation_items, ops_operations
from potato_ops.domain.operations import PENDING, RUNNING, Owner

LEASE = timedelta(minutes=5)  # a batch takes well under a second; a lapsed lease means a dead worker
DONE = "done"
PAUSED = "paused"  # `potato-ops pause`: claim nothing until resumed

_b = ops_operation_batches
_i = ops_operation_items
_ops = ops_operations


@dataclass(frozen=True)
class Claim:
    """A batch this worker holds: its number and the item positions it covers."""

    batch_no: int
    first_position: int
    last_position: int


@dataclass(frozen=True)
class NoClaim:
    """Why no batch was claimed: done (here), busy (others hold some), cancelled, fenced, paused."""

    reason: str


class Fenced(Exception):
    """Raised inside a batch's transaction when the worker lost its claim or the operation."""

    def __init__(self, message: str, *, operation_lost: bool) -> None:
        super().__init__(message)
        self.operation_lost = operation_lost


def plan_batches(conn: Connection, operation_id: str, size: int) -> int:
    """(Re)cut the operation's pending items into unclaimed batches; return how many.

    Every earlier claim is dropped: called when an operation is created and when ``resume``
    takes it over (after the epoch bump has fenced out every earlier worker).
    """
    conn.execute(delete(_b).where(_b.c.operation_id == operation_id))
    conn.execute(
        text(
            "INSERT INTO ops_operation_batches (operation_id, batch_no, status) "
            "SELECT DISTINCT :op, (position - 1) / :size, :pending FROM ops_operation_items "
            "WHERE operation_id = :op AND status = :pending"
        ),
        {"op": operation_id, "size": size, "pending": PENDING},
    )
    return int(
        conn.execute(
            select(func.count()).select_from(_b).where(_b.c.operation_id == operation_id)
        ).scalar_one()
    )


def _check_operation(conn: Connection, operation_id: str, epoch: int) -> str | None:
    """Return why the worker may not go on (cancelled, fenced, paused), locking the operation's row."""
    row = conn.execute(
        select(_ops.c.epoch, _ops.c.status, _ops.c.cancel_requested, _ops.c.pause_requested)
        .where(_ops.c.id == operation_id)
        .with_for_update(read=True)
    ).first()
    if row is None or row.epoch != epoch or row.status != RUNNING:
        return "fenced"
    if row.cancel_requested:
        return "cancelled"
    if row.pause_requested:
        return PAUSED
    return None


def claim_batch(
    conn: Connection, operation_id: str, size: int, worker: Owner, epoch: int, now: datetime
) -> Claim | NoClaim:
    """Claim the first batch nobody holds (or whose lease lapsed); else say why not."""
    stop = _check_operation(conn, operation_id, epoch)
    if stop is not None:
        return NoClaim(stop)
    free = (_b.c.claim_token.is_(None)) | (_b.c.expires_at < now)
    batch_no = conn.execute(
        select(_b.c.batch_no)
        .where(_b.c.operation_id == operation_id, _b.c.status == PENDING, free)
        .order_by(_b.c.batch_no)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if batch_no is None:
        others = conn.execute(
            select(func.count())
            .select_from(_b)
            .where(
                _b.c.operation_id == operation_id,
                _b.c.status == PENDING,
                _b.c.claim_token.is_distinct_from(worker.token),
            )
        ).scalar_one()
        # Only this worker's own threads hold what is left: they finish it, nothing to wait for.
        return NoClaim("busy" if others else DONE)
    conn.execute(
        update(_b)
        .where(_b.c.operation_id == operation_id, _b.c.batch_no == batch_no)
        .values(
            claim_token=worker.token,
            claim_host=worker.host,
            claim_pid=worker.pid,
            claimed_at=now,
            expires_at=now + LEASE,
        )
    )
    return Claim(int(batch_no), int(batch_no) * size + 1, (int(batch_no) + 1) * size)


def fence(conn: Connection, operation_id: str, claim: Claim, worker: Owner, epoch: int) -> None:
    """Raise Fenced unless this worker still holds the operation (epoch) and the batch's claim.

    Both rows stay locked until the caller's transaction ends: a takeover waits for this
    batch to commit, and sees it done.
    """
    if _check_operation(conn, operation_id, epoch) == "fenced":
        raise Fenced(
            f"operation {operation_id} was taken over (or ended): this worker stops", operation_lost=True
        )
    held = conn.execute(
        select(_b.c.batch_no)
        .where(
            _b.c.operation_id == operation_id,
            _b.c.batch_no == claim.batch_no,
            _b.c.status == PENDING,
            _b.c.claim_token == worker.token,
        )
        .with_for_update()
    ).first()
    if held is None:
        raise Fenced(
            f"batch {claim.batch_no} of operation {operation_id} was taken over after its lease lapsed",
            operation_lost=False,
        )


def fence_operation(conn: Connection, operation_id: str, epoch: int) -> None:
    """Raise Fenced unless this worker still holds the operation (its epoch, still running).

    The fence of work that belongs to no batch (catch-up); the operation's row stays locked
    until the caller's transaction ends, as ``fence`` keeps it.
    """
    if _check_operation(conn, operation_id, epoch) == "fenced":
        raise Fenced(
            f"operation {operation_id} was taken over (or ended): this runner stops", operation_lost=True
        )


def close_batch(conn: Connection, operation_id: str, claim: Claim, now: datetime) -> None:
    """Mark a claimed batch done (call after ``fence`` in the same transaction)."""
    conn.execute(
        update(_b)
        .where(_b.c.operation_id == operation_id, _b.c.batch_no == claim.batch_no)
        .values(status=DONE, finished_at=now)
    )


def batch_user_ids(conn: Connection, operation_id: str, claim: Claim) -> list[str]:
    """Return the batch's users still pending, in their stable order."""
    return list(
        conn.execute(
            select(_i.c.user_id)
            .where(
                _i.c.operation_id == operation_id,
                _i.c.status == PENDING,
                _i.c.position.between(claim.first_position, claim.last_position),
            )
            .order_by(_i.c.position)
        ).scalars()
    )


def take_over(conn: Connection, operation_id: str) -> int:
    """Bump the operation's epoch (fencing out every earlier worker); return the new epoch."""
    conn.execute(update(_ops).where(_ops.c.id == operation_id).values(epoch=_ops.c.epoch + 1))
    return int(conn.execute(select(_ops.c.epoch).where(_ops.c.id == operation_id)).scalar_one())
