"""The marks-to-runs grouping and the active rule as SQL, and the comparisons built on them.

Two Python rules are restated here in SQL, each beside a reference to its twin, and
``tests/test_sql_rules.py`` proves the two agree on generated data on both dialects:

* ``grouped_marks_sql``: the gaps-and-islands grouping of marked days into runs; its twin is
  ``potato_ops.domain.runs.group_consecutive_dates``.
* ``active_flag_sql``: whether a run is active on a user's local today; its twin is
  ``potato_ops.domain.runs.should_be_active``.

On them: ``differing_users`` (stored runs that differ from the grouping of the marks, the
scan's suspects), ``compare_batch`` (the same comparison for a bulk batch, with the grouping of
those who differ), ``runs_and_grouping`` (one user's runs and grouping in one read) and
``fill_grouped_runs`` (insert the grouping of users that hold no runs, PostgreSQL).

On PostgreSQL one statement per batch groups the users' marked days and compares them with
the stored runs both ways: a correct user costs one pass over its marks in SQL and a total row
in Python. On SQLite, where that query costs more than the rebuild it saves, the marks come as
one aggregated row per user (``joined_marked_dates``) and are grouped on day ordinals in Python
by the twin itself. Either way only the users whose runs differ get their grouping back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, Integer, Text, bindparam, text

from potato_ops.db.date_texts import as_date, iso_ordinals
from potato_ops.db.distributed import is_distributed
from potato_ops.db.engine import chunks, is_postgres
from potato_ops.domain.models import Run
from potato_ops.domain.runs import group_consecutive_ordinals

if TYPE_CHECKING:
    from sqlalchemy import Connection

Span = tuple[date, date, int]  # start, end, day_count
_COLS = "user_id, start_date, end_date, day_count"
_BAD = -1  # day_count of the row that says "this user differs"
# Dates come back untyped and are parsed by as_date: SQLAlchemy's SQLite date parsing is slow.


# ---------------------------------------------------------------------------- the two rules


def grouped_marks_sql(conn: Connection, user_filter: str = "") -> str:
    """Return the gaps-and-islands SELECT of every user's marked days as runs.

    The SQL twin of ``domain.runs.group_consecutive_dates`` (consecutive distinct marked days
    share ``date - row_number``). Columns: user_id, start_date, end_date, day_count.
    ``user_filter`` is appended to the WHERE clause of the marks (bound parameters only).
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


def users_grouping_sql(uids: str) -> str:
    """Return the grouping of the marked days of the users of a text array, user by user (PostgreSQL).

    The same rule as ``grouped_marks_sql`` (and so the twin of
    ``domain.runs.group_consecutive_dates``), computed for each user of ``uids`` (an SQL
    expression of type text[], e.g. ``CAST(:uids AS text[])``) on its own: one index lookup of
    the user's marks and a sort of a few hundred rows in memory, instead of one window over the
    whole batch's marks, which PostgreSQL sorts as one set (spilled to disk past ``work_mem``).
    The cost of a batch is then its users' marks alone, whatever the table's size. Columns as
    ``grouped_marks_sql``'s.
    """
    return (
        "SELECT u.user_id, g.start_date, g.end_date, g.day_count "
        f"FROM unnest({uids}) AS u (user_id) CROSS JOIN LATERAL ("
        "SELECT min(date) AS start_date, max(date) AS end_date, count(*) AS day_count FROM ("
        "SELECT date, date - CAST(row_number() OVER (ORDER BY date) AS integer) AS grp "
        "FROM day_marks WHERE user_id = u.user_id AND value) AS m GROUP BY grp) AS g"
    )


def batch_grouping_sql(conn: Connection, uids: str) -> str:
    """Return the grouping of the marked days of the users of a text array, for a batch (PostgreSQL).

    ``users_grouping_sql`` on one server; on Citus, which cannot join a function's rows
    laterally to a distributed table, ``grouped_marks_sql`` filtered to the users, which each
    worker runs on its own shards.
    """
    if is_distributed(conn):
        return grouped_marks_sql(conn, f"AND user_id = ANY({uids})")
    return users_grouping_sql(uids)


def active_flag_sql(conn: Connection, start: str, end: str, today: str) -> str:
    """Return a boolean SQL expression: is the run [start, end] active on ``today``?

    The SQL twin of ``domain.runs.should_be_active``: well-formed, started on or before today,
    and ending today or yesterday or later. The arguments are SQL expressions of date type
    (PostgreSQL) or ISO date text (SQLite).
    """
    yesterday = f"{today} - 1" if is_postgres(conn) else f"date({today}, '-1 day')"
    return f"({start} <= {end} AND {start} <= {today} AND {end} >= {yesterday})"


# ---------------------------------------------------------------------------- comparisons


def _differs_sql(grouped: str, runs_filter: str) -> str:
    """Return the CTEs ``e`` (the grouping), ``r`` (stored runs) and ``bad`` (who differs).

    Two EXCEPTs and the duplicates rather than a full outer join: both engines run them as
    sorts, where SQLite would run the join as a nested loop over an unindexed subquery.
    """
    return (
        f"WITH e AS MATERIALIZED ({grouped}), "
        f"r AS MATERIALIZED (SELECT {_COLS} FROM runs {runs_filter}), "
        f"bad AS MATERIALIZED (SELECT user_id FROM (SELECT {_COLS} FROM e EXCEPT SELECT {_COLS} FROM r) AS x "
        f"UNION SELECT user_id FROM (SELECT {_COLS} FROM r EXCEPT SELECT {_COLS} FROM e) AS y "
        f"UNION SELECT user_id FROM r GROUP BY {_COLS} HAVING count(*) > 1) "
    )


# A whole-database comparison reads this many users (by key) per statement: its temporary
# storage (the sorts and both sides of the differences) stays the size of a range, about
# 700 MB at 365 days a user, where the whole database at once needs a third of its own size.
RANGE_USERS = 20_000


_KEY_BOUNDS = text(
    "SELECT min(k), max(k) FROM ("
    "SELECT min(id) AS k FROM users UNION ALL SELECT max(id) FROM users "
    "UNION ALL SELECT min(user_id) FROM runs UNION ALL SELECT max(user_id) FROM runs "
    "UNION ALL SELECT min(user_id) FROM day_marks UNION ALL SELECT max(user_id) FROM day_marks) AS b"
)


@dataclass(frozen=True)
class KeyRange:
    """Users whose key is from ``lo`` (included for the first range only) to ``hi`` (included)."""

    lo: str
    hi: str
    first: bool

    @property
    def above(self) -> str:
        """Return the comparison a key makes with ``lo`` to fall in the range."""
        return ">=" if self.first else ">"

    @property
    def where(self) -> str:
        """Return the range as ``AND`` conditions on ``user_id``, with parameters :lo and :hi."""
        return f" AND user_id {self.above} :lo AND user_id <= :hi"

    @property
    def params(self) -> dict[str, str]:
        """Return the values of :lo and :hi."""
        return {"lo": self.lo, "hi": self.hi}


def user_ranges(conn: Connection, size: int) -> Iterator[KeyRange]:
    """Yield key ranges of about ``size`` users each, in order, covering every key in the tables.

    The ranges run from the lowest user id in ``users``, ``runs`` or ``day_marks`` to the
    highest, so a row of an id no user has (an orphan run) still falls in exactly one. Each is
    bounded on both sides: with no statistics, a planner takes a one-sided condition for a third
    of the table and scans it whole.
    """
    floor, ceiling = conn.execute(_KEY_BOUNDS).one()
    if floor is None:
        return
    keys = KeyRange(str(floor), str(ceiling), first=True)
    while True:
        hi = conn.execute(
            text(f"SELECT id FROM users WHERE id {keys.above} :lo ORDER BY id LIMIT 1 OFFSET :k"),
            {"lo": keys.lo, "k": size - 1},
        ).scalar()
        if hi is None:
            yield keys
            return
        yield KeyRange(keys.lo, str(hi), keys.first)
        keys = KeyRange(str(hi), str(ceiling), first=False)


def differing_users(conn: Connection, user_ids: Sequence[str] | None) -> set[str]:
    """Return the users (of those given, or all) whose stored runs differ from their marks' grouping.

    Dates and day_count are compared both ways, and duplicated runs count as a difference.
    All users: a statement per key range of ``RANGE_USERS`` users (each read by index), so
    the temporary storage the comparison needs is the size of a range, not of the database.
    """
    found: set[str] = set()
    if user_ids is None:
        for keys in user_ranges(conn, RANGE_USERS):
            body = _differs_sql(grouped_marks_sql(conn, keys.where), "WHERE true" + keys.where)
            found.update(r[0] for r in conn.execute(text(body + "SELECT user_id FROM bad"), keys.params))
        return found
    body = _differs_sql(grouped_marks_sql(conn, "AND user_id IN :uids"), "WHERE user_id IN :uids")
    stmt = text(body + "SELECT user_id FROM bad").bindparams(bindparam("uids", expanding=True))
    for part in chunks(list(user_ids)):
        found.update(r[0] for r in conn.execute(stmt, {"uids": list(part)}))
    return found


@dataclass
class BatchComparison:
    """What the database found: who differs (with their grouping) and everyone's totals."""

    differ: dict[str, list[Span]] = field(default_factory=dict)  # user -> grouping, sorted
    runs: dict[str, int] = field(default_factory=dict)  # user -> runs the marks give
    marked_days: dict[str, int] = field(default_factory=dict)  # user -> distinct marked days


def compare_batch(conn: Connection, user_ids: Sequence[str]) -> BatchComparison:
    """Return how the users' stored runs (dates and day_count) compare with their marks.

    Active flags are not compared here (they depend on each user's local today). PostgreSQL
    groups and compares in one statement; SQLite's window functions cost more than reading
    the marks in one aggregated row per user and grouping them here, so it does that.
    """
    if is_postgres(conn):
        return _compare_in_database(conn, user_ids)
    return _compare_here(conn, user_ids)


_JOINED_MARKS = text(
    "SELECT user_id, group_concat(date) FROM day_marks WHERE value AND user_id IN :uids GROUP BY user_id"
).bindparams(bindparam("uids", expanding=True))
_STORED_SPANS = text(
    "SELECT user_id, start_date, end_date, day_count FROM runs WHERE user_id IN :uids "
    "ORDER BY user_id, start_date, end_date, day_count"
).bindparams(bindparam("uids", expanding=True))


def joined_marked_dates(conn: Connection, user_ids: Sequence[str]) -> dict[str, str]:
    """Return each user's marked dates as SQLite's ISO texts joined by commas (users without none)."""
    found: dict[str, str] = {}
    for part in chunks(list(user_ids)):
        found.update((uid, joined) for uid, joined in conn.execute(_JOINED_MARKS, {"uids": list(part)}).all())
    return found


def _compare_here(conn: Connection, user_ids: Sequence[str]) -> BatchComparison:
    found = BatchComparison()
    for part in chunks(list(user_ids)):
        stored: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for uid, start, end, count in conn.execute(_STORED_SPANS, {"uids": list(part)}).all():
            stored[uid].append((as_date(start).toordinal(), as_date(end).toordinal(), count))
        marked = joined_marked_dates(conn, part)
        for uid in part:
            days = iso_ordinals(marked[uid].split(",")) if uid in marked else []
            groups = [(s, e, e - s + 1) for s, e in group_consecutive_ordinals(days)]
            if groups != stored.get(uid, []):
                found.differ[uid] = [(date.fromordinal(s), date.fromordinal(e), n) for s, e, n in groups]
            if groups:
                found.runs[uid] = len(groups)
                found.marked_days[uid] = len(days)
    return found


def _compare_statement(conn: Connection) -> str:
    """The batch comparison's statement (PostgreSQL): the batch's grouping, then ``bad``."""
    grouped = batch_grouping_sql(conn, "CAST(:uids AS text[])")
    return (
        _differs_sql(grouped, "WHERE user_id = ANY(CAST(:uids AS text[]))")
        + f"SELECT {_COLS}, 0 AS total FROM e WHERE user_id IN (SELECT user_id FROM bad) "
        f"UNION ALL SELECT user_id, NULL, NULL, {_BAD}, 0 FROM bad "
        "UNION ALL SELECT user_id, NULL, NULL, count(*), sum(day_count) FROM e GROUP BY user_id "
        "ORDER BY 1, 2"
    )


def _compare_in_database(conn: Connection, user_ids: Sequence[str]) -> BatchComparison:
    found = BatchComparison()
    grouping: dict[str, list[Span]] = defaultdict(list)
    bad: set[str] = set()
    stmt = text(_compare_statement(conn)).columns(user_id=Text, day_count=Integer, total=Integer)
    for part in chunks(sorted(set(user_ids))):
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


def fill_grouped_runs(conn: Connection, todays: dict[str, date]) -> None:
    """Insert the grouping of each user's marks as runs, flagged by the rule on its today.

    PostgreSQL only (one INSERT ... SELECT per chunk; nothing comes back): for users holding no
    runs, whose locks the caller holds.
    """
    insert = text(
        "INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
        "SELECT g.user_id, g.start_date, g.end_date, g.day_count, "
        f"{active_flag_sql(conn, 'g.start_date', 'g.end_date', 't.today')} "
        f"FROM ({batch_grouping_sql(conn, 'CAST(:uids AS text[])')}) AS g "
        "JOIN unnest(CAST(:uids AS text[]), CAST(:todays AS date[])) AS t (user_id, today) "
        "ON t.user_id = g.user_id"
    )
    for part in chunks(list(todays)):
        conn.execute(insert, {"uids": list(part), "todays": [todays[uid] for uid in part]})
