"""The rules that SQL restates agree with their Python twins, on generated data, on both backends.

``db.grouping.grouped_marks_sql`` (and its user-by-user form for PostgreSQL's batches,
``users_grouping_sql``) is the SQL of ``domain.runs.group_consecutive_dates`` and
``db.grouping.active_flag_sql`` the SQL of ``domain.runs.should_be_active``; the expected
results here come from the Python twins, the actual ones from the database.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Date, bindparam, delete, insert, text

from potato_ops import Storage
from potato_ops.db import grouping
from potato_ops.db.grouping import (
    active_flag_sql,
    compare_batch,
    differing_users,
    grouped_marks_sql,
    users_grouping_sql,
)
from potato_ops.db.schema import day_marks, runs, users
from potato_ops.domain.runs import group_consecutive_dates, should_be_active
from tests.conftest import NOW

RULE_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BASE = NOW.date()
USERS = ["a", "b", "c"]


def day(offset: int) -> date:
    return BASE + timedelta(days=offset)


# Per user: marked day offsets and un-marked ones (value false rows, which never count).
marks_of_users = st.dictionaries(
    st.sampled_from(USERS),
    st.tuples(st.sets(st.integers(-40, 40), max_size=25), st.sets(st.integers(-40, 40), max_size=6)),
    max_size=3,
)


def _reset(storage: Storage, marks: dict[str, tuple[set[int], set[int]]]) -> None:
    with storage.engine.begin() as conn:
        for table in (runs, day_marks, users):
            conn.execute(delete(table))
        for uid in USERS:
            conn.execute(insert(users).values(id=uid, email=f"{uid}@example.com", timezone="UTC"))
        rows = [
            {"user_id": uid, "date": day(d), "value": d in marked}
            for uid, (marked, unmarked) in marks.items()
            for d in marked | unmarked
        ]
        if rows:
            conn.execute(insert(day_marks), rows)


def _python_grouping(marks: dict[str, tuple[set[int], set[int]]]) -> list[tuple[str, date, date, int]]:
    return sorted(
        (uid, s, e, (e - s).days + 1)
        for uid, (marked, _unmarked) in marks.items()
        for s, e in group_consecutive_dates(day(d) for d in marked)
    )


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


@RULE_SETTINGS
@given(marks=marks_of_users)
def test_the_sql_grouping_is_the_python_grouping(
    storage: Storage, marks: dict[str, tuple[set[int], set[int]]]
) -> None:
    _reset(storage, marks)
    expected = _python_grouping(marks)
    with storage.engine.connect() as conn:
        found = conn.execute(
            text(f"SELECT user_id, start_date, end_date, day_count FROM ({grouped_marks_sql(conn)}) AS g")
        ).all()
    assert sorted((uid, _as_date(s), _as_date(e), int(n)) for uid, s, e, n in found) == expected


@RULE_SETTINGS
@given(marks=marks_of_users, asked=st.sets(st.sampled_from([*USERS, "nobody"])))
def test_the_user_by_user_sql_grouping_is_the_python_grouping(
    storage: Storage, marks: dict[str, tuple[set[int], set[int]]], asked: set[str]
) -> None:
    """PostgreSQL's batches group each asked user's marks on its own: the same runs, only theirs."""
    if storage.dialect != "postgresql":
        return  # SQLite's batches group in Python (the twin itself)
    _reset(storage, marks)
    expected = [row for row in _python_grouping(marks) if row[0] in asked]
    with storage.engine.connect() as conn:
        grouped = users_grouping_sql("CAST(:uids AS text[])")
        found = conn.execute(text(f"SELECT * FROM ({grouped}) AS g"), {"uids": sorted(asked)}).all()
    assert sorted((uid, _as_date(s), _as_date(e), int(n)) for uid, s, e, n in found) == expected


@RULE_SETTINGS
@given(marks=marks_of_users, stored=st.dictionaries(st.sampled_from(USERS), st.booleans()))
def test_runs_differ_from_the_marks_exactly_when_they_are_not_the_python_grouping(
    storage: Storage, marks: dict[str, tuple[set[int], set[int]]], stored: dict[str, bool]
) -> None:
    """Users with ``stored[uid]`` True hold their Python grouping; the others hold a day too few."""
    _reset(storage, marks)
    grouping = _python_grouping(marks)
    wrong: set[str] = set()
    with storage.engine.begin() as conn:
        for uid, s, e, n in grouping:
            if stored.get(uid, True):
                conn.execute(
                    insert(runs).values(user_id=uid, start_date=s, end_date=e, day_count=n, active=False)
                )
            elif n > 1:  # its first day left out: no longer the grouping
                conn.execute(
                    insert(runs).values(
                        user_id=uid,
                        start_date=s + timedelta(days=1),
                        end_date=e,
                        day_count=n - 1,
                        active=False,
                    )
                )
                wrong.add(uid)
            else:  # a one-day run left out altogether
                wrong.add(uid)
    with storage.engine.connect() as conn:
        assert differing_users(conn, None) == wrong
        assert differing_users(conn, USERS) == wrong
        assert set(compare_batch(conn, USERS).differ) == wrong


runs_and_days = st.lists(
    st.tuples(st.integers(-6, 6), st.integers(-6, 6), st.integers(-6, 6)), min_size=1, max_size=12
)


@RULE_SETTINGS
@given(cases=runs_and_days)
def test_the_sql_active_flag_is_should_be_active(storage: Storage, cases: list[tuple[int, int, int]]) -> None:
    """(start, end, today) offsets, malformed runs (start after end) included."""
    with storage.engine.connect() as conn:
        stmt = text(f"SELECT {active_flag_sql(conn, ':s', ':e', ':t')}").bindparams(
            bindparam("s", type_=Date), bindparam("e", type_=Date), bindparam("t", type_=Date)
        )
        for s, e, t in cases:
            got = conn.execute(stmt, {"s": day(s), "e": day(e), "t": day(t)}).scalar_one()
            assert bool(got) is should_be_active(day(s), day(e), day(t)), (s, e, t)


@pytest.mark.parametrize("range_users", [1, 2, 1000])
def test_the_whole_database_compare_in_key_ranges_finds_the_same_users(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, range_users: int
) -> None:
    """SQLite compares the whole database a key range at a time: no user or orphan run is missed."""
    monkeypatch.setattr(grouping, "RANGE_USERS", range_users)
    marks = {"a": ({0, 1, 2, 5}, set()), "b": ({3}, {4}), "c": ({-3, -2}, set())}
    _reset(storage, marks)
    grouping_rows = _python_grouping(marks)
    with storage.engine.begin() as conn:
        for uid, s, e, n in grouping_rows:
            if uid != "b":  # b holds no runs: it differs
                conn.execute(
                    insert(runs).values(user_id=uid, start_date=s, end_date=e, day_count=n, active=False)
                )
        # Runs of ids no user has, sorting before, between and after every user's id.
        for ghost in ("0-ghost", "b-ghost", "zz-ghost"):
            conn.execute(
                insert(runs).values(
                    user_id=ghost, start_date=day(0), end_date=day(0), day_count=1, active=False
                )
            )
    with storage.engine.connect() as conn:
        assert differing_users(conn, None) == {"b", "0-ghost", "b-ghost", "zz-ghost"}
