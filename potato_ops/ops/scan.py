"""Whole-database invariant scans, detection queries, the active-flag refresh, and the reads
the runbook's database-wide views need (timezones, run lengths, indexes).

The scan is set-based in two steps. First a few statements find the suspect users: those whose
stored runs differ from the gaps-and-islands grouping of their marks (``db.grouping``),
those holding duplicated runs, those with runs of no existing user, and those whose active
flag disagrees with the rule. Runs equal the grouping exactly when invariants 1-5 hold, so
nobody else can be in violation. Then each suspect's runs and marks are classified by the same
pure checker that validates every rebuild, so a rebuild and a scan can never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from potato_ops.db import catalog
from potato_ops.db.active_flags import flag_candidates, set_active
from potato_ops.db.engine import chunks, lock_users
from potato_ops.db.grouping import differing_users
from potato_ops.db.reads import (
    count_users,
    fetch_marked_dates,
    fetch_runs,
    fetch_users,
    orphan_owner_ids,
    user_timezones,
)
from potato_ops.db.reads import run_length_counts as run_length_counts_of
from potato_ops.domain.dates import ONE_DAY, local_today
from potato_ops.domain.invariants import check_invariants
from potato_ops.domain.models import InvariantReport, Violation, ViolationKind
from potato_ops.domain.runs import earliest_active_end, should_be_active
from potato_ops.ops import scan_record
from potato_ops.ops.database import Database

if TYPE_CHECKING:
    from sqlalchemy import Connection

_CLASSIFY_CHUNK = 500


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


def flag_rows(conn: Connection, user_ids: Sequence[str] | None, now: datetime) -> Iterator[FlagRow]:
    """Yield every run flagged active or recent enough to be active, judged by the rule at now.

    The rows stream (about one per user over a whole database): consume them before the next
    statement on ``conn``.
    """
    # Local today is never earlier than UTC's date minus one day (zones reach UTC-12).
    earliest = earliest_active_end(now.date() - ONE_DAY)
    for r in flag_candidates(conn, user_ids, earliest):
        yield FlagRow(
            r.id,
            r.user_id,
            r.active,
            should_be_active(r.start_date, r.end_date, local_today(r.timezone, now)),
            r.user_exists,
        )


def count_wrong_flags(conn: Connection, now: datetime) -> int:
    """Return how many runs' active flags disagree with the rule (the scan's stale_active)."""
    return sum(1 for row in flag_rows(conn, None, now) if row.wrong)


def suspect_users(conn: Connection, now: datetime, user_ids: Sequence[str] | None = None) -> set[str]:
    """Return every user who may break an invariant (a superset of those who do)."""
    found = differing_users(conn, user_ids)
    found.update(r.user_id for r in flag_rows(conn, user_ids, now) if r.wrong or not r.user_exists)
    return found | orphan_owner_ids(conn, user_ids)


def classify_users(conn: Connection, user_ids: Sequence[str], now: datetime) -> list[Violation]:
    """Return the violations of the given users, checked one by one by the pure checker."""
    found: list[Violation] = []
    for part in chunks(sorted(user_ids), _CLASSIFY_CHUNK):
        zones = user_timezones(conn, part)
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


def count_scanned(conn: Connection, user_ids: Sequence[str] | None) -> int:
    """Return how many users a scan covers."""
    if user_ids is not None:
        return len(set(user_ids))
    return count_users(conn)


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
        users_scanned=count_scanned(conn, user_ids),
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
    off: list[tuple[str, int]] = []
    on: list[tuple[str, int]] = []
    for r in flag_rows(conn, ordered, now):
        if r.active and not r.should_be_active:
            off.append((r.user_id, r.id))
        elif r.should_be_active and not r.active:
            on.append((r.user_id, r.id))
    # off first: one active run per user
    return set_active(conn, off, False) + set_active(conn, on, True)


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
    with db.read() as conn:
        return run_length_counts_of(conn, None if user_ids is None else sorted(set(user_ids)))


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
    return IndexCheck(catalog.primary_key(db.engine, "day_marks"), catalog.indexes(db.engine, "runs"))
