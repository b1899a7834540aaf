"""Statements on ``ops_scan_results``: the findings of each whole-database invariant scan."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select

from potato_ops.db.schema import ops_scan_results
from potato_ops.domain.dates import as_utc

# Rows kept beyond the newest of each source: a week of scans every five minutes, or so.
KEEP_ROWS = 2000


@dataclass(frozen=True)
class ScanResult:
    """One recorded scan: when, by whom, and what it found."""

    source: str
    scanned_at: datetime
    duration_ms: float
    users_scanned: int
    violations: int
    users_with_violations: int
    by_kind: Mapping[str, int] = field(default_factory=dict)


def insert_scan_result(conn: Connection, result: ScanResult) -> None:
    """Insert one scan's findings and drop the oldest rows past ``KEEP_ROWS``; the caller commits.

    The newest row of every source is always kept, so an audit that stopped long ago still
    says when it last succeeded.
    """
    t = ops_scan_results
    conn.execute(
        insert(t).values(
            source=result.source,
            scanned_at=result.scanned_at,
            duration_ms=result.duration_ms,
            users_scanned=result.users_scanned,
            violations=result.violations,
            users_with_violations=result.users_with_violations,
            by_kind=json.dumps(dict(result.by_kind), sort_keys=True),
        )
    )
    newest = conn.execute(select(func.max(t.c.id))).scalar_one()
    newest_of_source = select(func.max(t.c.id)).group_by(t.c.source)
    conn.execute(delete(t).where(t.c.id <= newest - KEEP_ROWS, t.c.id.not_in(newest_of_source)))


def latest_scan_result(conn: Connection, source: str | None = None) -> ScanResult | None:
    """Return the newest recorded scan (of this source, when given), or None if none was."""
    t = ops_scan_results
    query = select(t).order_by(t.c.scanned_at.desc(), t.c.id.desc()).limit(1)
    if source is not None:
        query = query.where(t.c.source == source)
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    try:
        by_kind = {str(k): int(v) for k, v in json.loads(row["by_kind"]).items()}
    except (ValueError, TypeError, AttributeError):
        by_kind = {}
    return ScanResult(
        source=row["source"],
        scanned_at=as_utc(row["scanned_at"]),
        duration_ms=float(row["duration_ms"]),
        users_scanned=int(row["users_scanned"]),
        violations=int(row["violations"]),
        users_with_violations=int(row["users_with_violations"]),
        by_kind=by_kind,
    )
