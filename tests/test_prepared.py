"""Statements run through ``run_prepared`` store and return what ``Connection.execute`` would."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Boolean, Integer, bindparam, insert, text
from sqlalchemy.exc import IntegrityError

from potato_ops import Storage
from potato_ops.db.engine import run_prepared
from potato_ops.db.schema import ops_rebuild_history, runs
from tests.conftest import add_user

_INSERT_RUN = insert(runs)
_INSERT_HISTORY = insert(ops_rebuild_history)
_SELECT_RUNS = (
    text(
        "SELECT start_date, end_date, day_count, active FROM runs "
        "WHERE user_id = :uid AND start_date >= :lo ORDER BY start_date"
    )
    .bindparams(bindparam("lo", type_=runs.c.start_date.type))
    .columns(day_count=Integer, active=Boolean)
)
_STORED = text(
    "SELECT CAST(start_date AS TEXT), CAST(end_date AS TEXT), day_count, active FROM runs "
    "WHERE user_id = :uid ORDER BY start_date"
)
_STORED_HISTORY = text(
    "SELECT CAST(started_at AS TEXT), CAST(from_date AS TEXT), success FROM ops_rebuild_history "
    "WHERE operation_id = :op ORDER BY user_id"
)


def _run(user_id: str, start: str, end: str, count: int, active: bool) -> dict[str, object]:
    return {
        "user_id": user_id,
        "start_date": date.fromisoformat(start),
        "end_date": date.fromisoformat(end),
        "day_count": count,
        "active": active,
    }


def _history(op: str, user_id: str) -> dict[str, object]:
    at = datetime(2024, 3, 10, 15, 0, 7, 120, tzinfo=UTC)
    return {
        "operation_id": op,
        "user_id": user_id,
        "kind": "rebuild",
        "started_at": at,
        "finished_at": at,
        "duration_ms": 1.5,
        "success": True,
        "from_date": date(2024, 3, 1),
    }


def test_writes_store_the_same_values_as_execute(storage: Storage) -> None:
    add_user(storage, "a", [])
    add_user(storage, "b", [])
    rows = [_run("{}", "2024-01-01", "2024-01-03", 3, False), _run("{}", "2024-02-01", "2024-02-01", 1, True)]
    with storage.engine.begin() as conn:
        run_prepared(conn, _INSERT_RUN, [{**r, "user_id": "a"} for r in rows])
        conn.execute(_INSERT_RUN, [{**r, "user_id": "b"} for r in rows])
        run_prepared(conn, _INSERT_HISTORY, [_history("by-prepared", "a")])
        conn.execute(_INSERT_HISTORY, [_history("by-execute", "a")])
    with storage.engine.connect() as conn:
        stored_a = conn.execute(_STORED, {"uid": "a"}).all()
        stored_b = conn.execute(_STORED, {"uid": "b"}).all()
        history_a = conn.execute(_STORED_HISTORY, {"op": "by-prepared"}).all()
        history_b = conn.execute(_STORED_HISTORY, {"op": "by-execute"}).all()
    assert stored_a == stored_b
    assert [(s, e, n, bool(a)) for s, e, n, a in stored_a] == [
        ("2024-01-01", "2024-01-03", 3, False),
        ("2024-02-01", "2024-02-01", 1, True),
    ]
    assert history_a == history_b and len(history_a) == 1
    assert history_a[0][0].startswith("2024-03-10 15:00:07.00012")


def test_reads_bind_typed_parameters_and_return_the_rows(storage: Storage) -> None:
    add_user(storage, "a", [])
    with storage.engine.begin() as conn:
        conn.execute(
            _INSERT_RUN,
            [_run("a", "2024-01-01", "2024-01-03", 3, False), _run("a", "2024-02-01", "2024-02-02", 2, True)],
        )
    with storage.engine.connect() as conn:
        got = run_prepared(conn, _SELECT_RUNS, {"uid": "a", "lo": date(2024, 1, 15)})
        again = run_prepared(conn, _SELECT_RUNS, {"uid": "a", "lo": date(2023, 12, 31)})
    assert [(str(s)[:10], str(e)[:10], n, bool(a)) for s, e, n, a in got] == [
        ("2024-02-01", "2024-02-02", 2, True)
    ]
    assert len(again) == 2


def test_errors_are_raised_as_sqlalchemy_errors(storage: Storage) -> None:
    add_user(storage, "a", [])
    # Two active runs: the one-active index refuses the second, as it would through execute.
    with pytest.raises(IntegrityError), storage.engine.begin() as conn:
        run_prepared(
            conn,
            _INSERT_RUN,
            [_run("a", "2024-01-01", "2024-01-01", 1, True), _run("a", "2024-02-01", "2024-02-01", 1, True)],
        )
    with storage.engine.connect() as conn:
        assert conn.execute(_STORED, {"uid": "a"}).all() == []
