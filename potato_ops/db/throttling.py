"""The ledger's record of a bulk operation's waits: its pause flag and its throttle episodes.

``ops_operations.pause_requested`` asks every worker to stop at its next batch boundary (the
claim reads it under the same row lock as a cancel); ``ops_throttle_episodes`` holds one row
per wait of one runner: kind, reason as last seen, start, end, and how often it looked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from potato_ops.db.schema import ops_operations, ops_throttle_episodes
from potato_ops.domain.dates import as_utc

_ops = ops_operations
_ep = ops_throttle_episodes


@dataclass(frozen=True)
class Episode:
    """One wait of one runner, as the ledger holds it (``ended_at`` None: still waiting)."""

    id: int
    runner_token: str
    kind: str
    reason: str
    started_at: datetime
    last_checked_at: datetime
    ended_at: datetime | None
    checks: int

    @property
    def seconds(self) -> float:
        """Return how long the wait lasted (so far: up to its last check)."""
        return max(((self.ended_at or self.last_checked_at) - self.started_at).total_seconds(), 0.0)


def set_pause(conn: Connection, operation_id: str, paused: bool) -> bool:
    """Set or clear the operation's pause request; return True if the operation exists."""
    done = conn.execute(update(_ops).where(_ops.c.id == operation_id).values(pause_requested=paused))
    return bool(done.rowcount)


def pause_requested(conn: Connection, operation_id: str) -> bool:
    """Return True if the operation was asked to pause (and not resumed since)."""
    flag = conn.execute(select(_ops.c.pause_requested).where(_ops.c.id == operation_id)).scalar_one_or_none()
    return bool(flag)


def open_episode(
    conn: Connection,
    operation_id: str,
    *,
    runner_token: str,
    runner_host: str,
    runner_pid: int,
    kind: str,
    reason: str,
    now: datetime,
) -> int:
    """Record that a runner began to wait; return the episode's id."""
    result = conn.execute(
        insert(_ep)
        .values(
            operation_id=operation_id,
            runner_token=runner_token,
            runner_host=runner_host,
            runner_pid=runner_pid,
            kind=kind,
            reason=reason,
            started_at=now,
            last_checked_at=now,
            checks=1,
        )
        .returning(_ep.c.id)
    )
    return int(result.scalar_one())


def touch_episode(conn: Connection, episode_id: int, reason: str, now: datetime) -> None:
    """Record one more look at the gate during the wait, with the reason it gave."""
    conn.execute(
        update(_ep)
        .where(_ep.c.id == episode_id)
        .values(reason=reason, last_checked_at=now, checks=_ep.c.checks + 1)
    )


def close_episode(conn: Connection, episode_id: int, now: datetime) -> None:
    """Record that the wait is over."""
    conn.execute(update(_ep).where(_ep.c.id == episode_id, _ep.c.ended_at.is_(None)).values(ended_at=now))


def close_open_episodes(conn: Connection, operation_id: str) -> int:
    """End the open waits of the operation's earlier runners (at their last check); return how many."""
    return int(
        conn.execute(
            update(_ep)
            .where(_ep.c.operation_id == operation_id, _ep.c.ended_at.is_(None))
            .values(ended_at=_ep.c.last_checked_at)
        ).rowcount
    )


_COLUMNS = (
    _ep.c.id,
    _ep.c.runner_token,
    _ep.c.kind,
    _ep.c.reason,
    _ep.c.started_at,
    _ep.c.last_checked_at,
    _ep.c.ended_at,
    _ep.c.checks,
)


def _episode(row: Any) -> Episode:
    i, token, kind, reason, started, checked, ended, checks = row
    return Episode(
        int(i),
        token,
        kind,
        reason,
        as_utc(started),
        as_utc(checked),
        None if ended is None else as_utc(ended),
        int(checks),
    )


def episodes(conn: Connection, operation_id: str) -> list[Episode]:
    """Return the operation's waits, oldest first."""
    rows = conn.execute(
        select(*_COLUMNS).where(_ep.c.operation_id == operation_id).order_by(_ep.c.started_at, _ep.c.id)
    )
    return [_episode(r) for r in rows]


def current_wait(conn: Connection, operation_id: str) -> Episode | None:
    """Return the open wait most recently looked at, or None when no runner is waiting."""
    row = conn.execute(
        select(*_COLUMNS)
        .where(_ep.c.operation_id == operation_id, _ep.c.ended_at.is_(None))
        .order_by(_ep.c.last_checked_at.desc(), _ep.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _episode(row)


@dataclass(frozen=True)
class GateFlags:
    """What the gate reads from the operation's row: pause, cancel, and its epoch."""

    pause_requested: bool
    cancel_requested: bool
    epoch: int


def gate_flags(conn: Connection, operation_id: str) -> GateFlags | None:
    """Return the operation's pause and cancel requests and epoch (None: no such operation)."""
    row = conn.execute(
        select(_ops.c.pause_requested, _ops.c.cancel_requested, _ops.c.epoch).where(_ops.c.id == operation_id)
    ).first()
    return None if row is None else GateFlags(bool(row[0]), bool(row[1]), int(row[2]))
