"""One user, read whole in one statement: the user, a feature flag, its runs and its marks.

The single-user rebuild reads this under the user's lock (taken by a statement of its own
before, so the read sees every earlier writer's commit), one round trip where separate reads
of the user, the runs and the marks would make three.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import Boolean, Connection, Date, Integer, TextClause, bindparam, text

from potato_ops.db.engine import run_prepared
from potato_ops.db.reads import as_date, iso_ordinals
from potato_ops.domain.models import Run, User
from potato_ops.domain.runs import group_consecutive_ordinals
from potato_ops.errors import UserNotFoundError
from potato_ops.ops.scan import grouped_marks_sql

# Row kinds: the user (with the flag), a stored run, a span of the marks' grouping.
_USER, _RUN = 0, 1

_HEAD = (
    "SELECT 0 AS k, NULL AS id, NULL AS start_date, NULL AS end_date, NULL AS day_count, "
    "NULL AS active, email, timezone, (SELECT enabled FROM feature_flags WHERE name = :flag) AS flag "
    "FROM users WHERE id = :uid "
    "UNION ALL SELECT 1, id, start_date, end_date, day_count, active, NULL, NULL, NULL "
    "FROM runs WHERE user_id = :uid "
    "UNION ALL SELECT 2, NULL, "
)
# SQLite: the marks as one text (group_concat), grouped here; its window function over a
# year of marks costs several times that, and so does its julianday(). PostgreSQL groups
# them itself.
_SQLITE_MARKS = "group_concat(date), NULL, NULL, NULL, NULL, NULL, NULL FROM day_marks WHERE value "
_PG_SPANS = "start_date, end_date, day_count, NULL, NULL, NULL, NULL FROM "
_STATEMENTS: dict[tuple[str, bool], TextClause] = {}  # (dialect, windowed): read_user's statement


def _statement(conn: Connection, windowed: bool) -> TextClause:
    key = (conn.dialect.name, windowed)
    if key not in _STATEMENTS:
        marks_filter = "AND user_id = :uid" + (" AND date BETWEEN :lo AND :hi" if windowed else "")
        if conn.dialect.name == "sqlite":
            stmt = text(f"{_HEAD}{_SQLITE_MARKS}{marks_filter}")
        else:
            stmt = text(f"{_HEAD}{_PG_SPANS}({grouped_marks_sql(conn, marks_filter)}) AS g")
        if windowed:
            stmt = stmt.bindparams(bindparam("lo", type_=Date), bindparam("hi", type_=Date))
        _STATEMENTS[key] = stmt.columns(id=Integer, day_count=Integer, active=Boolean, flag=Boolean)  # type: ignore[assignment]
    return _STATEMENTS[key]


_RUNS_SQL = "SELECT id, start_date, end_date, day_count, active FROM runs WHERE user_id = :uid "
_ORDER = " ORDER BY start_date, id"
_RUNS = text(_RUNS_SQL + _ORDER).columns(id=Integer, day_count=Integer, active=Boolean)
# The runs touching [lo, hi], and those flagged active or ending on or after ``recent``.
_RUNS_NEAR = (
    text(
        _RUNS_SQL + "AND ((end_date >= :lo AND start_date <= :hi) OR active OR end_date >= :recent)" + _ORDER
    )
    .bindparams(bindparam("lo", type_=Date), bindparam("hi", type_=Date), bindparam("recent", type_=Date))
    .columns(id=Integer, day_count=Integer, active=Boolean)
)


def read_runs(conn: Connection, user_id: str, near: tuple[date, date, date] | None = None) -> list[Run]:
    """Return one user's stored runs sorted by start, then id (``fetch_runs`` of one user).

    With ``near`` = (lo, hi, recent): only the runs touching [lo, hi], flagged active, or
    ending on or after ``recent`` (``fetch_runs`` with ``touching`` and ``active_after``).
    """
    if near is None:
        rows = run_prepared(conn, _RUNS, {"uid": user_id})
    else:
        lo, hi, recent = near
        rows = run_prepared(conn, _RUNS_NEAR, {"uid": user_id, "lo": lo, "hi": hi, "recent": recent})
    return [
        Run(run_id, user_id, as_date(start), as_date(end), count, bool(active))
        for run_id, start, end, count, active in rows
    ]


@dataclass
class UserRead:
    """What ``read_user`` found: the user, the flag, its runs and the grouping of its marks."""

    user: User
    flag: bool
    runs: list[Run]  # every stored run, sorted by start then id
    grouping: list[tuple[date, date, int]]  # (start, end, days) of the marks read, sorted


def read_user(
    conn: Connection, user_id: str, flag: str, between: tuple[date, date] | None = None
) -> UserRead:
    """Return the user, the flag's state (missing: off) and every run of the user, in one read.

    With the grouping into streaks of the user's marks: all of them, or with ``between`` those
    in that closed range (a streak crossing its edge is cut there). UserNotFoundError if there
    is no such user.
    """
    params: dict[str, object] = {"uid": user_id, "flag": flag}
    if between is not None:
        params["lo"], params["hi"] = between
    user: User | None = None
    enabled = False
    found: list[Run] = []
    grouping: list[tuple[date, date, int]] = []
    rows = run_prepared(conn, _statement(conn, between is not None), params)
    for kind, run_id, start, end, count, active, email, zone, flag_on in rows:
        if kind == _USER:
            user, enabled = User(user_id, email, zone), bool(flag_on)
        elif kind == _RUN:
            found.append(Run(run_id, user_id, as_date(start), as_date(end), count, bool(active)))
        elif end is not None:
            grouping.append((as_date(start), as_date(end), int(count)))
        elif start is not None:  # SQLite: the ISO dates joined by commas
            days = iso_ordinals(start.split(","))
            grouping = [
                (date.fromordinal(lo), date.fromordinal(hi), hi - lo + 1)
                for lo, hi in group_consecutive_ordinals(days)
            ]
    if user is None:
        raise UserNotFoundError(f"no user with id {user_id!r}")
    found.sort(key=lambda r: (r.start_date, r.id or 0))
    grouping.sort()
    return UserRead(user, enabled, found, grouping)
