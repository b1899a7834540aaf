"""Whole-database invariant scans, detection queries, the active-flag refresh, and the reads
the runbook's database-wide views need (timezones, run lengths, indexes).

The scan is set-based in two steps. First a few statements find the suspect users: those whose
stored runs differ from the gaps-and-islands grouping of their marks (one full outer join),
those holding duplicated runs, those with runs of no existing user, and those whose active
flag disagrees with the rule. Runs equal the grouping exactly when invariants 1-5 hold, so
nobody else can be in violation. Then each suspect's runs and marks are classified by the same
pure checker that validates every rebuild, so a rebuild and a scan can never disagree.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, func, inspect, select, text, update

from potato_ops.db.engine import chunks, is_postgres, lock_users
from potato_ops.db.reads import fetch_marked_dates, fetch_runs, fetch_users
from potato_ops.db.schema import runs, users
from potato_ops.domain.dates import ONE_DAY, local_today
from potato_ops.domain.invariants import check_invariants
from potato_ops.domain.models import InvariantReport, Violation, ViolationKind
from potato_ops.domain.runs import earliest_active_end, should_be_active
from potato_ops.ops import scan_record
from potato_ops.ops.database import Database

_CLASSIFY_CHUNK = 500


def grouped_marks_sql(conn: Connection, user_filter: str = "") -> str:
    """Return the gaps-and-islands SELECT of every user's marked days as runs.

    Columns: user_id, start_date, end_date, day_count. ``user_filter`` is appended to the
    WHERE clause of the marks (it may only reference bound parameters).
    """
    if is_postgres(conn):
        key = "date - CAST(row_number() OVER (PARTITION BY user_id ORDER BY date) AS integer)"
    else:
        key = "julianday(date) - row_number() OVER (PARTITION BY user_id ORDER BY date)"
    return (
        f"SELECT user_id, min(date) AS start_date, max(date) AS end_date, count(*) AS day_count "
        f"FROM (SELECT user_id, date, {key} AS grp FROM day_marks WHERE value {user_filter}) AS m "
        f"GROUP BY user_id, grp"
    )


def _suspects_by_shape(conn: Connection, user_ids: Sequence[str] | None) -> set[str]:
    parts: Iterable[Sequence[str] | None] = [None] if user_ids is None else chunks(list(user_ids))
    found: set[str] = set()
    for part in parts:
        marks_filter = "" if part is None else "AND user_id IN :uids"
        runs_filter = "" if part is None else "WHERE user_id IN :uids"
        # Two EXCEPTs rather than a full outer join: both engines run them as sorts, where
        # SQLite would run the join as a nested loop over an unindexed subquery.
        cols = "user_id, start_date, end_date, day_count"
        stmt = text(
            f"WITH e AS MATERIALIZED ({grouped_marks_sql(conn, marks_filter)}), "
            f"r AS MATERIALIZED (SELECT {cols} FROM runs {runs_filter}) "
            f"SELECT user_id FROM (SELECT {cols} FROM e EXCEPT SELECT {cols} FROM r) AS missing "
            f"UNION SELECT user_id FROM (SELECT {cols} FROM r EXCEPT SELECT {cols} FROM e) AS extra "
            f"UNION SELECT user_id FROM r GROUP BY {cols} HAVING count(*) > 1"
        )
        if part is not None:
            stmt = stmt.bindparams(bindparam("uids", expanding=True))
            found.update(r[0] for r in conn.execute(stmt, {"uids": list(part)}))
        else:
            found.update(r[0] for r in conn.execute(stmt))
    return found


class FlagRow(NamedTuple):
    """A run whose active flag may matter, with what the rule says it should be."""

    id: int
    user_id: str
    active: bool
    should_be_active: bool
    user_exists: bool

    @property
    def wrong(self) -> bool:
        """Return True when the stored flag disagrees with the rule."""
        return self.active != self.should_be_active


def flag_rows(conn: Connection, user_ids: Sequence[str] | None, now: datetime) -> list[FlagRow]:
    """Return every run flagged active or recent enough to be active, judged by the rule at now."""
    # Local today is never earlier than UTC's date minus one day (zones reach UTC-12).
    earliest = earliest_active_end(now.date() - ONE_DAY)
    query = (
        select(
            runs.c.id,
            runs.c.user_id,
            runs.c.start_date,
            runs.c.end_date,
            runs.c.active,
            users.c.timezone,
            users.c.id.is_not(None).label("exists"),
        )
        .select_from(runs.outerjoin(users, users.c.id == runs.c.user_id))
        .where(runs.c.active.is_(True) | (runs.c.end_date >= earliest))
    )
    rows: list[FlagRow] = []
    parts: Iterable[Sequence[str] | None] = [None] if user_ids is None else chunks(list(user_ids))
    for part in parts:
        q = query if part is None else query.where(runs.c.user_id.in_(part))
        for r in conn.execute(q):
            should = should_be_active(r.start_date, r.end_date, local_today(r.timezone, now))
            rows.append(FlagRow(r.id, r.user_id, bool(r.active), should, bool(r.exists)))
    return rows


def count_wrong_flags(conn: Connection, now: datetime) -> int:
    """Return how many runs' active flags disagree with the rule (the scan's stale_active)."""
    return sum(1 for row in flag_rows(conn, None, now) if row.wrong)


def _suspects_by_flags_and_owner(conn: Connection, user_ids: Sequence[str] | None, now: datetime) -> set[str]:
    found: set[str] = set()
    found.update(r.user_id for r in flag_rows(conn, user_ids, now) if r.wrong or not r.user_exists)
    orphan_query = (
        select(runs.c.user_id)
        .distinct()
        .select_from(runs.outerjoin(users, users.c.id == runs.c.user_id))
        .where(users.c.id.is_(None))
    )
    parts: Iterable[Sequence[str] | None] = [None] if user_ids is None else chunks(list(user_ids))
    for part in parts:
        q = orphan_query if part is None else orphan_query.where(runs.c.user_id.in_(part))
        found.update(r[0] for r in conn.execute(q))
    return found


def suspect_users(conn: Connection, now: datetime, user_ids: Sequence[str] | None = None) -> set[str]:
    """Return every user who may break an invariant (a superset of those who do)."""
    return _suspects_by_shape(conn, user_ids) | _suspects_by_flags_and_owner(conn, user_ids, now)


def classify_users(conn: Connection, user_ids: Sequence[str], now: datetime) -> list[Violation]:
    """Return the violations of the given users, checked one by one by the pure checker."""
    found: list[Violation] = []
    for part in chunks(sorted(user_ids), _CLASSIFY_CHUNK):
        zones = dict(conn.execute(select(users.c.id, users.c.timezone).where(users.c.id.in_(part))).all())
        stored = fetch_runs(conn, part)
        marks = fetch_marked_dates(conn, part)
        for uid in part:
            exists = uid in zones
            found.extend(
                check_invariants(
                    uid,
                    stored.get(uid, []),
                    marks.get(uid, []) if exists else [],
                    local_today(zones.get(uid), now),
                    user_exists=exists,
                )
            )
    return found


def count_users(conn: Connection, user_ids: Sequence[str] | None) -> int:
    """Return how many users a scan covers."""
    if user_ids is not None:
        return len(set(user_ids))
    return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def invariant_report(
    conn: Connection, now: datetime, user_ids: Sequence[str] | None = None
) -> InvariantReport:
    """Return the counts and violations of every invariant over the users (all by default)."""
    suspects = suspect_users(conn, now, user_ids)
    violations = classify_users(conn, sorted(suspects), now)

    def n(kind: str) -> int:
        return sum(1 for v in violations if v.kind == kind)

    def days(kind: str) -> int:
        return sum(v.count for v in violations if v.kind == kind)

    return InvariantReport(
        overlapping_runs=n(ViolationKind.OVERLAP),
        multiple_active_runs=n(ViolationKind.MULTIPLE_ACTIVE),
        adjacent_runs=n(ViolationKind.ADJACENT),
        uncovered_days=days(ViolationKind.UNCOVERED_DAY),
        phantom_days=days(ViolationKind.PHANTOM_DAY),
        stale_active=n(ViolationKind.STALE_ACTIVE),
        malformed_runs=n(ViolationKind.MALFORMED),
        orphan_runs=n(ViolationKind.ORPHAN),
        violations=violations,
        users_scanned=count_users(conn, user_ids),
        users_with_violations=sorted({v.user_id for v in violations}),
    )


def refresh_active_flags(conn: Connection, now: datetime) -> int:
    """Bring every run's active flag in line with the rule at ``now``; return flags changed.

    Runs in the caller's writing transaction. Only users whose flags are wrong are locked,
    then re-read under the lock, so a concurrent rebuild is never overwritten.
    """
    wrong = {r.user_id for r in flag_rows(conn, None, now) if r.user_exists and r.wrong}
    if not wrong:
        return 0
    ordered = sorted(wrong)
    lock_users(conn, ordered)
    off: list[tuple[int, str]] = []
    on: list[tuple[int, str]] = []
    for r in flag_rows(conn, ordered, now):
        if r.active and not r.should_be_active:
            off.append((r.id, r.user_id))
        elif r.should_be_active and not r.active:
            on.append((r.id, r.user_id))
    changed = 0
    for targets, value in ((off, False), (on, True)):  # off first: one active run per user
        for part in chunks(targets):
            changed += conn.execute(
                update(runs)
                .where(runs.c.user_id.in_({u for _, u in part}), runs.c.id.in_([i for i, _ in part]))
                .values(active=value)
            ).rowcount
    return changed


def validate_invariants(
    db: Database, user_ids: Sequence[str] | None = None, *, source: str = scan_record.SCAN
) -> InvariantReport:
    """Scan the database (or the given users) for every kind of invariant violation.

    A whole-database scan records its findings (``scan_record``) under ``source``.
    """
    started, clock = db.now(), time.perf_counter()
    with db.read() as conn:
        report = invariant_report(conn, started, user_ids)
    if user_ids is None:
        duration_ms = (time.perf_counter() - clock) * 1000
        scan_record.record_scan(db, scan_record.scan_result_of(report, source, started, duration_ms))
    return report


def users_with(db: Database, kind: ViolationKind) -> list[str]:
    """Return the users with at least one violation of this kind."""
    return validate_invariants(db).users_with(kind)


def refresh_active_runs(db: Database) -> int:
    """Bring every stale active flag up to date; return how many flags changed."""
    with db.write() as conn:
        return refresh_active_flags(conn, db.now())


# ---------------------------------------------------------------------------- views' reads


def timezones_of(db: Database, user_ids: Sequence[str]) -> dict[str, str]:
    """Return the timezone of each of the users that exists, by id (missing ids left out)."""
    with db.read() as conn:
        return {u.id: u.timezone for u in fetch_users(conn, sorted(set(user_ids)))}


def run_length_counts(db: Database, user_ids: Sequence[str] | None = None) -> dict[int, int]:
    """Return how many stored runs have each day_count (every user's, or the given users')."""
    query = select(runs.c.day_count, func.count()).group_by(runs.c.day_count)
    counts: Counter[int] = Counter()
    with db.read() as conn:
        if user_ids is None:
            counts.update({int(n): int(c) for n, c in conn.execute(query)})
        else:
            for part in chunks(sorted(set(user_ids))):
                counts.update(
                    {int(n): int(c) for n, c in conn.execute(query.where(runs.c.user_id.in_(part)))}
                )
    return dict(counts)


@dataclass(frozen=True)
class IndexCheck:
    """The keys that keep per-user reads fast: day_marks' primary key, runs' indexes."""

    day_marks_key: list[str]  # the primary key's columns, in order
    runs_indexes: list[list[str]]  # each index's columns, in order

    @property
    def day_marks_keyed_by_user(self) -> bool:
        """Return True when day_marks is keyed by (user_id, date)."""
        return self.day_marks_key[:2] == ["user_id", "date"]

    @property
    def runs_indexed_by_user(self) -> bool:
        """Return True when an index on runs starts with user_id."""
        return any(cols and cols[0] == "user_id" for cols in self.runs_indexes)


def index_check(db: Database) -> IndexCheck:
    """Return the database's keys on day_marks and runs, as its catalog describes them."""
    db.require_schema()
    inspector = inspect(db.engine)
    key = inspector.get_pk_constraint("day_marks").get("constrained_columns") or []
    indexed = [[str(c) for c in ix["column_names"] if c is not None] for ix in inspector.get_indexes("runs")]
    return IndexCheck([str(c) for c in key], indexed)
