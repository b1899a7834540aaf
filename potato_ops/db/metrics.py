"""The monitoring figures' statements: rebuild history, backups and operations, set-based.

``monitoring.metrics`` composes them into ``Metrics``. A window is ``[start, end]`` (both ends
included, either open) over ``finished_at``, or one bulk operation's rows. Full and partial
rebuilds count; restores, recorded in the same table, do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Float, and_, case, cast, distinct, func, select

from potato_ops.db.history import PARTIAL_REBUILD, REBUILD
from potato_ops.db.schema import ops_backups, ops_operations, ops_rebuild_history
from potato_ops.domain.dates import as_utc

if TYPE_CHECKING:
    from sqlalchemy import Connection

REBUILD_KINDS: tuple[str, ...] = (REBUILD, PARTIAL_REBUILD)


@dataclass(frozen=True)
class Window:
    """Which history rows a figure covers: ``[start, end]``, or one operation's."""

    start: datetime | None
    end: datetime | None
    operation_id: str | None = None


def _window_condition(window: Window) -> ColumnElement[bool]:
    h = ops_rebuild_history
    conditions: list[ColumnElement[bool]] = [h.c.kind.in_(REBUILD_KINDS)]
    if window.operation_id is not None:
        conditions.append(h.c.operation_id == window.operation_id)
    if window.start is not None:
        conditions.append(h.c.finished_at >= window.start)
    if window.end is not None:
        conditions.append(h.c.finished_at <= window.end)
    return and_(*conditions)


@dataclass(frozen=True)
class RebuildFigures:
    """What the rebuild history of a window says."""

    count: int
    successes: int
    users: int
    violations: int
    slow_users: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


def rebuild_figures(conn: Connection, window: Window, slow_threshold_ms: float) -> RebuildFigures:
    """Return counts and durations of the window's rebuilds, in one SELECT.

    Percentiles are ``percentile_cont`` (linear interpolation between the two nearest ranks),
    written with window functions and integer arithmetic so both dialects compute them.
    """
    h = ops_rebuild_history
    ranked = (
        select(
            h.c.user_id,
            h.c.success,
            h.c.violations,
            h.c.duration_ms.label("d"),
            (func.row_number().over(order_by=h.c.duration_ms) - 1).label("i"),
            func.count().over().label("n"),
        )
        .where(_window_condition(window))
        .subquery()
    )

    def percentile(percent: int) -> ColumnElement[Any]:
        scaled = (ranked.c.n - 1) * percent  # the rank p * (n - 1), times 100
        below = scaled // 100
        weight = cast(scaled % 100, Float) / 100.0
        return func.sum(
            case(
                (ranked.c.i == below, ranked.c.d * (1 - weight)),
                (ranked.c.i == below + 1, ranked.c.d * weight),
                else_=0.0,
            )
        )

    row = conn.execute(
        select(
            func.count().label("rebuilds"),
            func.coalesce(func.sum(case((ranked.c.success, 1), else_=0)), 0).label("ok"),
            func.count(distinct(ranked.c.user_id)).label("users"),
            func.coalesce(func.sum(ranked.c.violations), 0).label("violations"),
            func.count(distinct(case((ranked.c.d > slow_threshold_ms, ranked.c.user_id)))).label("slow"),
            func.avg(ranked.c.d).label("avg"),
            percentile(50).label("p50"),
            percentile(95).label("p95"),
            func.max(ranked.c.d).label("max"),
        )
    ).one()
    return RebuildFigures(
        count=int(row.rebuilds),
        successes=int(row.ok),
        users=int(row.users),
        violations=int(row.violations),
        slow_users=int(row.slow),
        avg_ms=_float(row.avg),
        p50_ms=_float(row.p50),
        p95_ms=_float(row.p95),
        max_ms=_float(row.max),
    )


def backup_figures(conn: Connection, now: datetime) -> tuple[int, float | None, float | None]:
    """Return (backups kept, age of the oldest in hours, age of the newest in hours)."""
    b = ops_backups
    row = conn.execute(select(func.count(), func.min(b.c.created_at), func.max(b.c.created_at))).one()
    count, oldest, newest = int(row[0]), row[1], row[2]

    def age(instant: datetime | None) -> float | None:
        return None if instant is None else (as_utc(now) - as_utc(instant)).total_seconds() / 3600

    return count, age(oldest), age(newest)


def operation_figures(
    conn: Connection,
    start: datetime | None,
    end: datetime | None,
    operation_id: str | None,
) -> tuple[int, int]:
    """Return (operations failed within the window, operations interrupted now)."""
    o = ops_operations
    ended = func.coalesce(o.c.finished_at, o.c.heartbeat_at, o.c.started_at, o.c.created_at)
    in_window: list[ColumnElement[bool]] = [o.c.status == "failed"]
    if start is not None:
        in_window.append(ended >= start)
    if end is not None:
        in_window.append(ended <= end)
    query = select(
        func.coalesce(func.sum(case((and_(*in_window), 1), else_=0)), 0),
        func.coalesce(func.sum(case((o.c.status == "interrupted", 1), else_=0)), 0),
    )
    if operation_id is not None:
        query = query.where(o.c.id == operation_id)
    failed, interrupted = conn.execute(query).one()
    return int(failed), int(interrupted)


def last_completed_operation(conn: Connection) -> datetime | None:
    """Return when the newest completed bulk operation finished (UTC), or None if none did."""
    o = ops_operations
    finished = conn.execute(select(func.max(o.c.finished_at)).where(o.c.status == "completed")).scalar()
    return None if finished is None else as_utc(finished)


def history_rows(conn: Connection, window: Window) -> list[tuple[datetime, str, str, float, bool, int]]:
    """Return the window's rebuilds, oldest first: (finished_at, user_id, kind, ms, success, violations)."""
    h = ops_rebuild_history
    query = (
        select(h.c.finished_at, h.c.user_id, h.c.kind, h.c.duration_ms, h.c.success, h.c.violations)
        .where(_window_condition(window))
        .order_by(h.c.finished_at, h.c.user_id, h.c.id)
    )
    return [
        (as_utc(r.finished_at), r.user_id, r.kind, float(r.duration_ms), bool(r.success), int(r.violations))
        for r in conn.execute(query)
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
