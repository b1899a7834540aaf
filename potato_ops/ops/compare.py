"""Compare a batch of users' stored runs with the grouping of their marks.

On PostgreSQL one statement per batch groups the users' marked days into runs (the scan's
gaps-and-islands query) and compares them with the stored runs both ways: a correct user costs
one pass over its marks in SQL and a total row in Python. On SQLite, where that query costs
more than the rebuild it saves, the marks come as one aggregated row per user and are grouped
on day ordinals here. Either way only the users whose runs differ get their grouping back, so
the rebuild never reads or groups their marks again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Boolean, Connection, Integer, Text, bindparam, text

from potato_ops.db.engine import chunks, is_postgres
from potato_ops.db.reads import as_date, iso_ordinals
from potato_ops.domain.models import Run
from potato_ops.domain.runs import group_consecutive_ordinals
from potato_ops.ops.scan import grouped_marks_sql

Span = tuple[date, date, int]  # start, end, day_count
_COLS = "user_id, start_date, end_date, day_count"
_BAD = -1  # day_count of the row that says "this user differs"
# Dates come back untyped and are parsed by as_date: SQLAlchemy's SQLite date parsing is slow.


@dataclass
class BatchComparison:
    """What the database found: who differs (with their grouping) and everyone's totals."""

    differ: dict[str, list[Span]] = field(default_factory=dict)  # user -> grouping, sorted
    runs: dict[str, int] = field(default_factory=dict)  # user -> runs the marks give
    marked_days: dict[str, int] = field(default_factory=dict)  # user -> distinct marked days


def _statement(conn: Connection) -> str:
    grouped = grouped_marks_sql(conn, "AND user_id IN :uids")
    return (
        f"WITH e AS MATERIALIZED ({grouped}), "
        f"r AS MATERIALIZED (SELECT {_COLS} FROM runs WHERE user_id IN :uids), "
        # Two EXCEPTs and the duplicates, as the scan finds its suspects: both engines sort.
        f"bad AS MATERIALIZED (SELECT user_id FROM (SELECT {_COLS} FROM e EXCEPT SELECT {_COLS} FROM r) AS x "
        f"UNION SELECT user_id FROM (SELECT {_COLS} FROM r EXCEPT SELECT {_COLS} FROM e) AS y "
        f"UNION SELECT user_id FROM r GROUP BY {_COLS} HAVING count(*) > 1) "
        f"SELECT {_COLS}, 0 AS total FROM e WHERE user_id IN (SELECT user_id FROM bad) "
        f"UNION ALL SELECT user_id, NULL, NULL, {_BAD}, 0 FROM bad "
        "UNION ALL SELECT user_id, NULL, NULL, count(*), sum(day_count) FROM e GROUP BY user_id "
        "ORDER BY 1, 2"
    )


def compare_batch(conn: Connection, user_ids: Sequence[str]) -> BatchComparison:
    """Return how the users' stored runs (dates and day_count) compare with their marks.

    Active flags are not compared here (they depend on each user's local today). PostgreSQL
    groups and compares in one statement; SQLite's window functions cost more than reading
    the marks in one aggregated row per user and grouping them here, so it does that.
    """
    if is_postgres(conn):
        return _compare_in_database(conn, user_ids)
    return _compare_here(conn, user_ids)


def _compare_here(conn: Connection, user_ids: Sequence[str]) -> BatchComparison:
    found = BatchComparison()
    marks_stmt = text(
        "SELECT user_id, group_concat(date) FROM day_marks WHERE value AND user_id IN :uids GROUP BY user_id"
    ).bindparams(bindparam("uids", expanding=True))
    runs_stmt = text(
        "SELECT user_id, start_date, end_date, day_count FROM runs WHERE user_id IN :uids "
        "ORDER BY user_id, start_date, end_date, day_count"
    ).bindparams(bindparam("uids", expanding=True))
    for part in chunks(list(user_ids)):
        params = {"uids": list(part)}
        stored: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for uid, start, end, count in conn.execute(runs_stmt, params).all():
            stored[uid].append((as_date(start).toordinal(), as_date(end).toordinal(), count))
        marked: dict[str, str] = {uid: joined for uid, joined in conn.execute(marks_stmt, params).all()}
        for uid in part:
            days = iso_ordinals(marked[uid].split(",")) if uid in marked else []
            groups = [(s, e, e - s + 1) for s, e in group_consecutive_ordinals(days)]
            if groups != stored.get(uid, []):
                found.differ[uid] = [(date.fromordinal(s), date.fromordinal(e), n) for s, e, n in groups]
            if groups:
                found.runs[uid] = len(groups)
                found.marked_days[uid] = len(days)
    return found


def _compare_in_database(conn: Connection, user_ids: Sequence[str]) -> BatchComparison:
    found = BatchComparison()
    grouping: dict[str, list[Span]] = defaultdict(list)
    bad: set[str] = set()
    stmt = (
        text(_statement(conn))
        .bindparams(bindparam("uids", expanding=True))
        .columns(user_id=Text, day_count=Integer, total=Integer)
    )
    for part in chunks(list(user_ids)):
        for uid, start, end, count, total in conn.execute(stmt, {"uids": list(part)}).all():
            if start is not None:
                grouping[uid].append((as_date(start), as_date(end), count))
            elif count == _BAD:
                bad.add(uid)
            else:
                found.runs[uid] = count
                found.marked_days[uid] = total
    found.differ = {uid: grouping.get(uid, []) for uid in sorted(bad)}
    return found


def runs_and_grouping(conn: Connection, user_id: str) -> tuple[list[Run], list[Span]]:
    """Return (the user's stored runs, the grouping of its marks), both sorted, in one read."""
    stmt = text(
        "SELECT id, start_date, end_date, day_count, active FROM runs WHERE user_id = :uid "
        "UNION ALL SELECT NULL, start_date, end_date, day_count, NULL "
        f"FROM ({grouped_marks_sql(conn, 'AND user_id = :uid')}) AS g "
        "ORDER BY 2, 1"
    ).columns(id=Integer, day_count=Integer, active=Boolean)
    stored: list[Run] = []
    grouping: list[Span] = []
    for run_id, start, end, count, active in conn.execute(stmt, {"uid": user_id}).all():
        start, end = as_date(start), as_date(end)
        if run_id is None:
            grouping.append((start, end, count))
        else:
            stored.append(Run(run_id, user_id, start, end, count, bool(active)))
    return stored, grouping
