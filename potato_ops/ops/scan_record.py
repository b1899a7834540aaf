"""Each whole-database scan's findings kept in the database, and the newest read back.

A quick metrics run (``--no-scan``), the exporter and the dashboards show the last scan's
figures with its time, so a violation found by one scan stays visible until a later scan no
longer finds it; an absent figure would let a firing alert resolve by itself. The audit's own
scans are recorded under ``AUDIT``: the newest of them is when an audit last succeeded.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_secrets
from potato_ops.db.engine import read_connection
from potato_ops.db.scan_results import ScanResult, insert_scan_result, latest_scan_result
from potato_ops.domain.models import InvariantReport, ViolationKind
from potato_ops.ops.database import Database

log = logging.getLogger("potato_ops")

SCAN = "scan"  # potato-ops validate, Storage.validate_invariants(), notebooks
METRICS = "metrics"  # potato-ops metrics with its scan
AUDIT = "audit"  # the scheduled audit
SOURCES: tuple[str, ...] = (SCAN, METRICS, AUDIT)


def scan_result_of(
    report: InvariantReport, source: str, scanned_at: datetime, duration_ms: float
) -> ScanResult:
    """Return what a whole-database scan's report says, as the row that records it."""
    counted = Counter(v.kind for v in report.violations)
    return ScanResult(
        source=source,
        scanned_at=scanned_at,
        duration_ms=duration_ms,
        users_scanned=report.users_scanned,
        violations=report.total,
        users_with_violations=len(report.users_with_violations),
        by_kind={str(kind): counted.get(kind, 0) for kind in tuple(ViolationKind)},
    )


def record_scan(db: Database, result: ScanResult) -> bool:
    """Return True once the scan's findings are committed; False (logged) when the write failed.

    A scan on a database that refuses writes (a read-only standby) still returns its report:
    only the record is missing, and the next metrics run says its figures are older.
    """
    try:
        with db.write() as conn:
            insert_scan_result(conn, result)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        log.warning("the scan's findings could not be recorded: %s", mask_secrets(detail))
        return False
    return True


def last_scan(db: Database, source: str | None = None) -> ScanResult | None:
    """Return the newest recorded scan (of one source, when given), or None if there is none."""
    with read_connection(db.engine) as conn:
        return latest_scan_result(conn, source)
