"""Reads of app tables, keyed by user id, that every operation shares."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Text, and_, func, or_, select, type_coerce

from potato_ops.db.engine import chunks
from potato_ops.db.schema import day_marks, feature_flags, runs, users
from potato_ops.domain.models import DayMark, Run, User
from potato_ops.errors import UserNotFoundError


def as_utc(value: datetime) -> datetime:
    """Return value as an aware UTC datetime (SQLite hands back naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite's ISO date texts seen, parsed: the same few thousand days recur in every read.
_PARSED: dict[str, date] = {}
_PARSED_MAX = 200_000


def as_date(value: date | str) -> date:
    """Return a date column's value as a date: PostgreSQL gives dates, SQLite its ISO text."""
    if isinstance(value, date):
        return value
    found = _PARSED.get(value)
    return found if found is not None else iso_dates([value])[0]


def iso_dates(texts: Sequence[str]) -> list[date]:
    """Return the dates of ISO date texts (SQLite's), each text parsed once per process."""
    try:
        return list(map(_PARSED.__getitem__, texts))
    except KeyError:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        for t in texts:
            if t not in _PARSED:
                _PARSED[t] = date.fromisoformat(t[:10])
        return list(map(_PARSED.__getitem__, texts))


def iso_ordinals(texts: Sequence[str]) -> list[int]:
    """Return the day ordinals of ISO date texts (see ``iso_dates``)."""
    return [d.toordinal() for d in iso_dates(texts)]


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


def fetch_feature_flag(conn: Connection, name: str) -> bool:
    """Return the flag's state; a missing flag is off."""
    value = conn.execute(select(feature_flags.c.enabled).where(feature_flags.c.name == name)).scalar()
    return bool(value)
