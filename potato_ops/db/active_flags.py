"""The active flags: which stored runs' flags may matter now, and setting flags.

The rule itself is ``domain.runs.should_be_active`` (judged in Python on what these reads give;
``db.grouping.active_flag_sql`` is its SQL twin where a statement must set it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import date
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import bindparam, select, update

from potato_ops.db.engine import chunks, run_prepared
from potato_ops.db.schema import runs, users

if TYPE_CHECKING:
    from sqlalchemy import Connection


class FlagCandidate(NamedTuple):
    """A run flagged active or recent enough to be active, with its user's zone (if any)."""

    id: int
    user_id: str
    start_date: date
    end_date: date
    active: bool
    timezone: str | None
    user_exists: bool


# Rows fetched at a time: a whole-database read holds a candidate per user (about a run each),
# so it streams them (a server-side cursor on PostgreSQL) instead of holding them all.
STREAM_ROWS = 10_000


def flag_candidates(
    conn: Connection, user_ids: Sequence[str] | None, earliest_end: date
) -> Iterator[FlagCandidate]:
    """Yield every run flagged active or ending on or after ``earliest_end`` (of the users, or all).

    Consume the candidates before the next statement on ``conn``: they are read as they go.
    """
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
        .where(runs.c.active.is_(True) | (runs.c.end_date >= earliest_end))
    )
    parts: Iterable[Sequence[str] | None] = [None] if user_ids is None else chunks(list(user_ids))
    for part in parts:
        q = query if part is None else query.where(runs.c.user_id.in_(part))
        for r in conn.execute(q.execution_options(yield_per=STREAM_ROWS)):
            yield FlagCandidate(
                r.id, r.user_id, r.start_date, r.end_date, bool(r.active), r.timezone, bool(r.exists)
            )


# A few rows (a single-user rebuild's usual writes) go by this statement, built once, one
# parameter set per run: an IN list is compiled anew for each call, which costs more.
FEW_ROWS = 8
_SET_RUN_ACTIVE = (
    update(runs)
    .where(runs.c.user_id == bindparam("uid"), runs.c.id == bindparam("rid"))
    .values(active=bindparam("flag"))
)


def set_active(conn: Connection, targets: Sequence[tuple[str, int | None]], value: bool) -> int:
    """Set the active flag of the runs keyed (user id, run id) to ``value``; return rows changed."""
    if not targets:
        return 0
    if len(targets) <= FEW_ROWS:
        run_prepared(conn, _SET_RUN_ACTIVE, [{"uid": uid, "rid": rid, "flag": value} for uid, rid in targets])
        return len(targets)
    changed = 0
    for part in chunks(list(targets)):
        changed += conn.execute(
            update(runs)
            .where(runs.c.user_id.in_({uid for uid, _ in part}), runs.c.id.in_([rid for _, rid in part]))
            .values(active=value)
        ).rowcount
    return changed
