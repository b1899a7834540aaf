"""Writes of stored runs: delete, insert (active flags are set by ``db.flags``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, insert, update

from potato_ops.db.active_flags import FEW_ROWS
from potato_ops.db.engine import chunks, run_prepared
from potato_ops.db.schema import runs
from potato_ops.domain.models import Run

if TYPE_CHECKING:
    from sqlalchemy import Connection

_DELETE_RUN = delete(runs).where(runs.c.user_id == bindparam("uid"), runs.c.id == bindparam("rid"))
_INSERT_RUNS = insert(runs)


def delete_runs(conn: Connection, targets: Sequence[tuple[str, int | None]]) -> None:
    """Delete the runs keyed (user id, run id)."""
    if not targets:
        return
    if len(targets) <= FEW_ROWS:
        run_prepared(conn, _DELETE_RUN, [{"uid": uid, "rid": rid} for uid, rid in targets])
        return
    for part in chunks(list(targets)):
        conn.execute(
            delete(runs).where(
                runs.c.user_id.in_({uid for uid, _ in part}),
                runs.c.id.in_([rid for _, rid in part]),
            )
        )


def delete_runs_of(conn: Connection, user_ids: Sequence[str]) -> None:
    """Delete every run of the users."""
    for part in chunks(list(user_ids)):
        conn.execute(delete(runs).where(runs.c.user_id.in_(part)))


def insert_runs(conn: Connection, new: Sequence[Run]) -> None:
    """Insert the runs (their ids are the database's)."""
    if not new:
        return
    run_prepared(
        conn,
        _INSERT_RUNS,
        [
            {
                "user_id": r.user_id,
                "start_date": r.start_date,
                "end_date": r.end_date,
                "day_count": r.day_count,
                "active": r.active,
            }
            for r in new
        ],
    )


def update_run(conn: Connection, run: Run) -> None:
    """Overwrite the dates, day_count and flag of the run keyed (user id, run id)."""
    conn.execute(
        update(runs)
        .where(runs.c.user_id == run.user_id, runs.c.id == run.id)
        .values(start_date=run.start_date, end_date=run.end_date, day_count=run.day_count, active=run.active)
    )


def insert_run_rows(conn: Connection, rows: Sequence[tuple[str, str, str, int, int]]) -> None:
    """Insert runs given as SQLite's plain tuples (user_id, start ISO, end ISO, day_count, active 0/1)."""
    if rows:
        conn.exec_driver_sql(
            "INSERT INTO runs (user_id, start_date, end_date, day_count, active) VALUES (?, ?, ?, ?, ?)",
            list(rows),
        )
