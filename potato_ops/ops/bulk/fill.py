"""A bulk batch's users that hold no runs at all, filled set-based.

``rebuild_bulk_batch`` is ``rebuild_batch`` for the bulk engine: inside the batch's
transaction, after taking the users' locks, it asks which of them hold any run. Those that hold
none (every run missing: the write-heavy case) need no diff, and a backup of each is a backup
of zero runs, so they are filled in a fixed number of statements per batch:

* PostgreSQL: one INSERT ... SELECT groups their marked days into runs in the database (the
  grouping of ``db.grouping``, the active flag by its SQL twin on each user's local today); nothing comes
  back to Python. It is validated as a bulk run validates a correct user: the batch
  comparison (stored runs against the grouping of the marks, both ways, and duplicates) must
  find no difference, and the runs whose flag may matter are checked against the rule.
* SQLite, where that window query costs more than grouping here: the marks come as one
  aggregated row per user, are grouped on day ordinals, and go back in one executemany of
  plain tuples. They are validated by reading the users' runs back: they must equal the
  grouping exactly (invariants 1-5 hold exactly then) and their flags must follow the rule.

Changed users (those given runs) get their backup of zero runs, written in one statement. A
difference found by the validation raises ``FillMismatch``: the batch is rolled back and
each of its users redone alone by the ordinary engine, which records what is wrong. The other
users of the batch go through ``rebuild_batch`` as before.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING

from potato_ops.db.backups import take_backups
from potato_ops.db.engine import is_postgres, lock_users
from potato_ops.db.grouping import compare_batch, fill_grouped_runs, joined_marked_dates
from potato_ops.db.reads import fetch_runs, run_rows, users_holding_runs
from potato_ops.db.run_writes import insert_run_rows
from potato_ops.domain.dates import local_today
from potato_ops.domain.invariants import check_active_flags
from potato_ops.domain.models import Run, User
from potato_ops.domain.runs import earliest_active_end, group_consecutive_dates, should_be_active
from potato_ops.ops.batch_rebuild import (
    BACKUP_ALWAYS,
    BACKUP_NEVER,
    BatchOptions,
    UserOutcome,
    rebuild_batch,
    timed,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection


class FillMismatch(Exception):
    """The filled runs of some users did not validate (the batch is redone user by user)."""


def rebuild_bulk_batch(
    conn: Connection,
    batch: Sequence[User],
    options: BatchOptions,
    now: datetime,
    timings: dict[str, float] | None = None,
) -> dict[str, UserOutcome]:
    """Rebuild the users like ``rebuild_batch``, filling those that hold no runs set-based."""
    if len(batch) < 2 or options.partial or options.backup == BACKUP_ALWAYS:
        return rebuild_batch(conn, batch, options, now, timings)
    ids = [u.id for u in batch]
    with timed(timings, "lock"):
        lock_users(conn, ids)
    with timed(timings, "read"):
        holding = users_holding_runs(conn, ids)
    empty = [u for u in batch if u.id not in holding]
    if not empty:
        return rebuild_batch(conn, batch, options, now, timings)
    rest = [u for u in batch if u.id in holding]
    outcomes = rebuild_batch(conn, rest, options, now, timings) if rest else {}
    outcomes.update(fill_users(conn, empty, options, now, timings))
    return {uid: outcomes[uid] for uid in ids}


def fill_users(
    conn: Connection,
    batch: Sequence[User],
    options: BatchOptions,
    now: datetime,
    timings: dict[str, float] | None = None,
) -> dict[str, UserOutcome]:
    """Insert the runs of users that hold none (the caller holds their locks); validate them.

    Raises FillMismatch when the runs stored afterwards are not the grouping of the marks.
    """
    todays = {u.id: local_today(u.timezone, now) for u in batch}
    if is_postgres(conn):
        outcomes = _fill_in_database(conn, todays, timings)
    else:
        outcomes = _fill_here(conn, todays, timings)
    if options.backup != BACKUP_NEVER:
        with timed(timings, "backup"):
            owned: list[tuple[str, list[Run]]] = [(uid, []) for uid, o in outcomes.items() if o.changed]
            reason, operation_id = options.backup_reason, options.operation_id
            taken = take_backups(conn, owned, now, reason=reason, operation_id=operation_id)
            for saved in taken:
                outcomes[saved.user_id].backup = saved
    return outcomes


def _flag_violations(conn: Connection, todays: dict[str, date], outcomes: dict[str, UserOutcome]) -> None:
    """Set each user's active-flag violations, from the runs whose flag may matter."""
    earliest_end = earliest_active_end(min(todays.values()))
    flagged = fetch_runs(conn, list(todays), active_after=earliest_end)
    for uid, mine in flagged.items():
        outcomes[uid].violations = check_active_flags(uid, mine, todays[uid])


def _fill_in_database(
    conn: Connection, todays: dict[str, date], timings: dict[str, float] | None
) -> dict[str, UserOutcome]:
    ids = list(todays)
    with timed(timings, "write"):
        fill_grouped_runs(conn, todays)
    with timed(timings, "validate"):
        found = compare_batch(conn, ids)
        if found.differ:
            raise FillMismatch(f"{len(found.differ)} users' filled runs differ from their marks")
        outcomes = {
            uid: UserOutcome(
                uid, runs_created=found.runs.get(uid, 0), days_processed=found.marked_days.get(uid, 0)
            )
            for uid in ids
        }
        _flag_violations(conn, todays, outcomes)
    return outcomes


def _fill_here(
    conn: Connection, todays: dict[str, date], timings: dict[str, float] | None
) -> dict[str, UserOutcome]:
    ids = list(todays)
    with timed(timings, "read"):
        marked = joined_marked_dates(conn, ids)
    outcomes: dict[str, UserOutcome] = {}
    expected: dict[str, list[tuple[str, str, int, int]]] = {}
    rows: list[tuple[str, str, str, int, int]] = []
    with timed(timings, "compute"):
        for uid in ids:
            t_user = time.perf_counter()
            joined = marked.get(uid)
            groups = group_consecutive_dates(d[:10] for d in joined.split(",")) if joined else []
            today = todays[uid]
            mine = [
                (s.isoformat(), e.isoformat(), (e - s).days + 1, int(should_be_active(s, e, today)))
                for s, e in groups
            ]
            expected[uid] = mine
            rows.extend((uid, *run) for run in mine)
            outcomes[uid] = UserOutcome(
                uid,
                runs_created=len(mine),
                days_processed=sum(n for _s, _e, n, _a in mine),
                own_ms=(time.perf_counter() - t_user) * 1000,
            )
    with timed(timings, "write"):
        insert_run_rows(conn, rows)
    with timed(timings, "validate"):
        stored = run_rows(conn, ids)
        differ = [uid for uid in ids if stored.get(uid, []) != expected[uid]]
        if differ:
            raise FillMismatch(f"{len(differ)} users' filled runs differ from their marks")
        # Equal to the grouping: invariants 1-5 hold; the flags, set by the rule, are checked by it.
        for uid in ids:
            edge = earliest_active_end(todays[uid]).isoformat()
            flagged = [
                Run(None, uid, date.fromisoformat(s), date.fromisoformat(e), n, bool(a))
                for s, e, n, a in stored.get(uid, [])
                if a or e >= edge
            ]
            outcomes[uid].violations = check_active_flags(uid, flagged, todays[uid])
    return outcomes
