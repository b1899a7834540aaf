"""Reads of app tables, keyed by user id, that every operation shares.

Also the single-user rebuild's reads (``read_user``, ``read_runs``): one user read whole in
one statement (the user, a feature flag, its runs and its marks), taken under the user's lock
(a statement of its own before, so the read sees every earlier writer's commit), one round
trip where separate reads of the user, the runs and the marks would make three.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    Date,
    Integer,
    Text,
    TextClause,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    type_coerce,
)

from potato_ops.db.date_texts import as_date, iso_dates, iso_ordinals
from potato_ops.db.engine import chunks, run_prepared
from potato_ops.db.grouping import grouped_marks_sql
from potato_ops.db.schema import day_marks, feature_flags, runs, users
from potato_ops.domain.models import DayMark, Run, User
from potato_ops.domain.runs import group_consecutive_ordinals
from potato_ops.errors import UserNotFoundError


def raw_dates(conn: Connection, *cols: ColumnElement[date]) -> list[ColumnElement[Any]]:
    """Return the date columns as the driver gives them (parse with ``as_date``).

    SQLAlchemy's date parsing on SQLite costs several times ``date.fromisoformat``; a bulk
    batch reads tens of thousands of dates.
    """
    if conn.dialect.name == "postgresql":
        return list(cols)
    return [type_coerce(c, Text) for c in cols]


def _user(row: object) -> User:
    return User(row.id, row.email, row.timezone)  # type: ignore[attr-defined]


def fetch_user(conn: Connection, user_id: str) -> User:
    """Return the user with this id, or raise UserNotFoundError."""
    row = conn.execute(
        select(users.c.id, users.c.email, users.c.timezone).where(users.c.id == user_id)
    ).first()
    if row is None:
        raise UserNotFoundError(f"no user with id {user_id!r}")
    return _user(row)


def fetch_user_and_flag(conn: Connection, user_id: str, flag: str) -> tuple[User, bool]:
    """Return the user with this id and the feature flag's state (missing: off), in one read."""
    enabled = select(feature_flags.c.enabled).where(feature_flags.c.name == flag).scalar_subquery()
    row = conn.execute(
        select(users.c.id, users.c.email, users.c.timezone, enabled.label("flag")).where(
            users.c.id == user_id
        )
    ).first()
    if row is None:
        raise UserNotFoundError(f"no user with id {user_id!r}")
    return _user(row), bool(row.flag)


def fetch_user_by_email(conn: Connection, email: str) -> User:
    """Return the user with this email (case-insensitive), or raise UserNotFoundError."""
    row = conn.execute(
        select(users.c.id, users.c.email, users.c.timezone).where(
            func.lower(users.c.email) == email.strip().lower()
        )
    ).first()
    if row is None:
        raise UserNotFoundError(f"no user with email {email!r}")
    return _user(row)


def fetch_users(conn: Connection, user_ids: Sequence[str] | None = None) -> list[User]:
    """Return the given users that exist (all users when None), ordered by id."""
    query = select(users.c.id, users.c.email, users.c.timezone).order_by(users.c.id)
    if user_ids is None:
        return [_user(r) for r in conn.execute(query)]
    found: list[User] = []
    for part in chunks(list(user_ids)):
        found.extend(_user(r) for r in conn.execute(query.where(users.c.id.in_(part))))
    found.sort(key=lambda u: u.id)
    return found


def fetch_runs(
    conn: Connection,
    user_ids: Sequence[str],
    *,
    touching: tuple[date, date] | None = None,
    active_after: date | None = None,
) -> dict[str, list[Run]]:
    """Return each user's stored runs sorted by start.

    With ``touching`` only runs intersecting that closed range, plus (with ``active_after``)
    runs flagged active or ending on or after that date: the ones whose flag may change.
    With ``active_after`` alone, only those.
    """
    found: dict[str, list[Run]] = defaultdict(list)
    cols = (
        runs.c.id,
        runs.c.user_id,
        *raw_dates(conn, runs.c.start_date, runs.c.end_date),
        runs.c.day_count,
        runs.c.active,
    )
    for part in chunks(list(user_ids)):
        query = select(*cols).where(runs.c.user_id.in_(part))
        if touching is not None:
            cond = and_(runs.c.end_date >= touching[0], runs.c.start_date <= touching[1])
            if active_after is not None:
                cond = or_(cond, runs.c.active, runs.c.end_date >= active_after)
            query = query.where(cond)
        elif active_after is not None:
            query = query.where(or_(runs.c.active, runs.c.end_date >= active_after))
        # fetchall + tuple unpacking: row-by-row fetching costs several times more in bulk
        ordered = query.order_by(runs.c.user_id, runs.c.start_date, runs.c.id)
        for run_id, uid, start, end, count, active in conn.execute(ordered).all():
            found[uid].append(Run(run_id, uid, as_date(start), as_date(end), count, bool(active)))
    return found


def fetch_marked_dates(
    conn: Connection,
    user_ids: Sequence[str],
    between: tuple[date, date] | None = None,
) -> dict[str, list[date]]:
    """Return each user's distinct marked (value true) dates, sorted, optionally in a range.

    One row per user (the dates aggregated by the server, sorted here): a bulk batch reads
    hundreds of thousands of marks, and a row per mark costs several times more to fetch.
    """
    postgres = conn.dialect.name == "postgresql"
    dates = func.array_agg(day_marks.c.date) if postgres else func.group_concat(day_marks.c.date)
    found: dict[str, list[date]] = {}
    for part in chunks(list(user_ids)):
        query = (
            select(day_marks.c.user_id, dates)
            .where(day_marks.c.user_id.in_(part), day_marks.c.value.is_(True))
            .group_by(day_marks.c.user_id)
        )
        if between is not None:
            query = query.where(day_marks.c.date.between(between[0], between[1]))
        for uid, agg in conn.execute(query).all():
            # SQLite's group_concat gives the stored ISO texts joined by commas.
            mine = list(agg) if postgres else iso_dates(agg.split(","))
            mine.sort()
            found[uid] = mine
    return defaultdict(list, found)


def fetch_day_marks(conn: Connection, user_id: str) -> list[DayMark]:
    """Return all of a user's day marks (true and false) sorted by date."""
    rows = conn.execute(
        select(day_marks.c.user_id, day_marks.c.date, day_marks.c.value)
        .where(day_marks.c.user_id == user_id)
        .order_by(day_marks.c.date)
    )
    return [DayMark(r.user_id, r.date, bool(r.value)) for r in rows]


# ---------------------------------------------------------------------------- one user, one read

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


# ---------------------------------------------------------------------------- the scan's and fill's reads


def users_holding_runs(conn: Connection, user_ids: Sequence[str]) -> set[str]:
    """Return which of the users hold at least one run."""
    stmt = text("SELECT DISTINCT user_id FROM runs WHERE user_id IN :uids").bindparams(
        bindparam("uids", expanding=True)
    )
    found: set[str] = set()
    for part in chunks(list(user_ids)):
        found.update(uid for (uid,) in conn.execute(stmt, {"uids": list(part)}).all())
    return found


_RUN_ROWS = text(
    "SELECT user_id, start_date, end_date, day_count, active FROM runs WHERE user_id IN :uids "
    "ORDER BY user_id, start_date, id"
).bindparams(bindparam("uids", expanding=True))


def run_rows(conn: Connection, user_ids: Sequence[str]) -> dict[str, list[tuple[Any, Any, int, int]]]:
    """Return each user's runs as the driver gives them, (start, end, day_count, active 0/1), by start."""
    found: dict[str, list[tuple[Any, Any, int, int]]] = defaultdict(list)
    for part in chunks(list(user_ids)):
        for uid, start, end, count, active in conn.execute(_RUN_ROWS, {"uids": list(part)}).all():
            found[uid].append((start, end, count, int(active)))
    return found


def orphan_owner_ids(conn: Connection, user_ids: Sequence[str] | None = None) -> set[str]:
    """Return the ids (of those given, or all) that own runs but are no user."""
    query = (
        select(runs.c.user_id)
        .distinct()
        .select_from(runs.outerjoin(users, users.c.id == runs.c.user_id))
        .where(users.c.id.is_(None))
    )
    if user_ids is None:
        return {r[0] for r in conn.execute(query)}
    found: set[str] = set()
    for part in chunks(list(user_ids)):
        found.update(r[0] for r in conn.execute(query.where(runs.c.user_id.in_(part))))
    return found


def user_timezones(conn: Connection, user_ids: Sequence[str]) -> dict[str, str]:
    """Return the timezone of each of the users that exists, by id."""
    found: dict[str, str] = {}
    for part in chunks(list(user_ids)):
        found.update(
            (uid, zone)
            for uid, zone in conn.execute(select(users.c.id, users.c.timezone).where(users.c.id.in_(part)))
        )
    return found


def count_users(conn: Connection) -> int:
    """Return how many users there are."""
    return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def run_length_counts(conn: Connection, user_ids: Sequence[str] | None = None) -> dict[int, int]:
    """Return how many stored runs have each day_count (every user's, or the given users')."""
    query = select(runs.c.day_count, func.count()).group_by(runs.c.day_count)
    counts: dict[int, int] = defaultdict(int)
    parts = (
        [query] if user_ids is None else [query.where(runs.c.user_id.in_(p)) for p in chunks(list(user_ids))]
    )
    for q in parts:
        for n, c in conn.execute(q):
            counts[int(n)] += int(c)
    return dict(counts)
