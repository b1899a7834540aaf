"""The rebuild history table: one row per user per rebuild or restore, with its outcome."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, func, insert, select

from potato_ops.db.engine import run_prepared
from potato_ops.db.schema import ops_rebuild_history

REBUILD = "rebuild"
PARTIAL_REBUILD = "partial_rebuild"
RESTORE = "restore"


@dataclass(frozen=True)
class HistoryEntry:
    """What one rebuild or restore of one user did."""

    operation_id: str
    user_id: str
    kind: str
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    success: bool
    runs_deleted: int = 0
    runs_created: int = 0
    days_processed: int = 0
    violations: int = 0
    from_date: date | None = None
    to_date: date | None = None
    error: str | None = None


_INSERT = insert(ops_rebuild_history)  # built once: building it per call costs more than a row


def record_history(conn: Connection, entries: Sequence[HistoryEntry]) -> None:
    """Insert history rows in one statement."""
    if entries:
        # vars, not asdict: asdict deep-copies every value, a real cost for a bulk batch
        run_prepared(conn, _INSERT, [dict(vars(e)) for e in entries])


def slow_users(conn: Connection, threshold_ms: float) -> list[str]:
    """Return users with a recorded rebuild slower than threshold_ms, slowest first."""
    h = ops_rebuild_history

    query = (
        select(h.c.user_id)
        .where(h.c.kind != RESTORE, h.c.duration_ms > threshold_ms)
        .group_by(h.c.user_id)
        .order_by(func.max(h.c.duration_ms).desc(), h.c.user_id)
    )
    return [r[0] for r in conn.execute(query)]
