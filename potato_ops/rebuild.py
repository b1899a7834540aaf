"""The rebuild engine: one batch of users, full or partial, inside the caller's transaction.

Single-user rebuilds are a batch of one; bulk rebuilds are many batches. Per batch it is a
fixed number of statements whatever the batch size: lock, read runs, read marks, (backups),
delete, deactivate, insert, activate, re-read, so the cost per user is a few rows of I/O and
a little Python. Only runs whose dates are wrong are replaced; right ones keep their ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, and_, delete, insert, update

from potato_ops.backup import make_backup, save_backups
from potato_ops.db import chunks, lock_users
from potato_ops.models import Backup, Run, User, Violation
from potato_ops.queries import fetch_marked_dates, fetch_runs
from potato_ops.runs import (
    ONE_DAY,
    check_active_flags,
    check_invariants,
    diff_runs,
    expected_runs,
    is_active,
    local_today,
)
from potato_ops.schema import runs

FIRST_DAY = date(1, 1, 2)  # open bounds, one day inside date.min/max so +/- 1 day is safe
LAST_DAY = date(9999, 12, 30)
_MARK_PAD = timedelta(days=62)

BACKUP_ALWAYS = "always"
BACKUP_CHANGED = "changed"
BACKUP_NEVER = "never"


@dataclass(frozen=True)
class BatchOptions:
    """How to rebuild a batch."""

    operation_id: str
    from_date: date | None = None
    to_date: date | None = None
    backup: str = BACKUP_ALWAYS
    backup_reason: str = "rebuild"

    @property
    def partial(self) -> bool:
        """Return True for a date-range rebuild."""
        return self.from_date is not None or self.to_date is not None


@dataclass
class UserOutcome:
    """What the batch did (or would do) to one user."""

    user_id: str
    runs_deleted: int = 0
    runs_created: int = 0
    runs_unchanged: int = 0
    active_flags_changed: int = 0
    days_processed: int = 0
    violations: list[Violation] = field(default_factory=list)
    backup: Backup | None = None
    deleted_runs: list[Run] = field(default_factory=list)
    created_runs: list[Run] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """Return True when the user's runs validated."""
        return not self.violations

    @property
    def changed(self) -> bool:
        """Return True when the user's runs or flags were (or would be) written."""
        return bool(self.runs_deleted or self.runs_created or self.active_flags_changed)


@dataclass
class _Plan:
    user: User
    today: date
    touched: list[Run]  # stored runs the rebuild may replace
    protected: list[Run]  # stored runs outside the window, fetched for their active flag
    lo: date
    hi: date
    expected: list[Run] = field(default_factory=list)
    check_lo: date = FIRST_DAY
    check_hi: date = LAST_DAY
    marks: list[date] = field(default_factory=list)  # the marks the plan was computed from

    @property
    def days(self) -> int:
        return len(self.marks)


def _intersects(run: Run, lo: date, hi: date) -> bool:
    return run.end_date >= lo and run.start_date <= hi


@contextmanager
def _timed(timings: dict[str, float] | None, phase: str) -> Iterator[None]:
    """Add the block's wall time (ms) to timings[phase], when timings are wanted."""
    if timings is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + (time.perf_counter() - t0) * 1000


def rebuild_batch(
    conn: Connection,
    batch: Sequence[User],
    options: BatchOptions,
    now: datetime,
    timings: dict[str, float] | None = None,
) -> dict[str, UserOutcome]:
    """Rebuild the users' runs in the caller's transaction and validate them; don't commit.

    The caller commits when every outcome succeeded (or only the good ones, retrying the
    others alone), and rolls back for a dry run. ``timings``, when given, receives the ms
    spent in each phase: lock, read, compute, backup, write, validate.
    """
    ids = [u.id for u in batch]
    with _timed(timings, "lock"):
        lock_users(conn, ids)
    f = options.from_date or FIRST_DAY
    t = options.to_date or LAST_DAY
    todays = {u.id: local_today(u.timezone, now) for u in batch}
    min_yesterday = min(todays.values(), default=now.date()) - 2 * ONE_DAY

    # Every run is read when a backup of every user is wanted anyway (one read, not two);
    # otherwise a partial rebuild reads only the runs near its window and the flagged ones.
    read_all = not options.partial or options.backup == BACKUP_ALWAYS
    with _timed(timings, "read"):
        if read_all:
            stored = fetch_runs(conn, ids)
        else:
            stored = fetch_runs(conn, ids, touching=(f - ONE_DAY, t + ONE_DAY), active_after=min_yesterday)
    plans: dict[str, _Plan] = {}
    for user in batch:
        mine = stored.get(user.id, [])
        touched = [r for r in mine if _intersects(r, f - ONE_DAY, t + ONE_DAY)]
        protected = [r for r in mine if not _intersects(r, f - ONE_DAY, t + ONE_DAY)]
        lo = min([f, *(r.start_date for r in touched)])
        hi = max([t, *(r.end_date for r in touched)])
        plans[user.id] = _Plan(user, todays[user.id], touched, protected, lo, hi)

    _plan_expected(conn, plans, partial=options.partial, timings=timings)

    t_diff = time.perf_counter()
    outcomes: dict[str, UserOutcome] = {}
    to_delete: list[Run] = []
    to_deactivate: list[Run] = []
    to_insert: list[Run] = []
    to_activate: list[Run] = []
    for uid, plan in plans.items():
        diff = diff_runs(plan.touched, plan.expected)
        deactivate = list(diff.deactivate)
        activate = list(diff.activate)
        for r in plan.protected:
            should = r.start_date <= r.end_date and is_active(r.start_date, r.end_date, plan.today)
            if r.active and not should:
                deactivate.append(r)
            elif should and not r.active:
                activate.append(r)
        to_delete += diff.delete
        to_deactivate += deactivate
        to_insert += diff.create
        to_activate += activate
        outcomes[uid] = UserOutcome(
            uid,
            runs_deleted=len(diff.delete),
            runs_created=len(diff.create),
            runs_unchanged=len(diff.keep),
            active_flags_changed=len(deactivate) + len(activate),
            days_processed=plan.days,
            deleted_runs=list(diff.delete),
            created_runs=list(diff.create),
        )

    if timings is not None:
        timings["compute"] = timings.get("compute", 0.0) + (time.perf_counter() - t_diff) * 1000
    with _timed(timings, "backup"):
        _take_backups(conn, plans, outcomes, options, now)
    with _timed(timings, "write"):
        _write(conn, to_delete, to_deactivate, to_insert, to_activate)
    with _timed(timings, "validate"):
        _validate(conn, plans, outcomes, partial=options.partial)
    return outcomes


def _plan_expected(
    conn: Connection,
    plans: dict[str, _Plan],
    *,
    partial: bool,
    timings: dict[str, float] | None = None,
) -> None:
    """Read the marks around each user's window and compute the runs it should hold."""
    if not plans:
        return
    if not partial:
        with _timed(timings, "read"):
            marks = fetch_marked_dates(conn, list(plans))
        with _timed(timings, "compute"):
            for uid, plan in plans.items():
                plan.marks = marks.get(uid, [])
                plan.expected = expected_runs(uid, plan.marks, plan.today)
        return

    pending = dict(plans)
    pad = _MARK_PAD
    while pending:
        # Clamp before shifting: an open bound (FIRST_DAY/LAST_DAY) +/- pad is out of range.
        lo_edge = min(p.lo for p in pending.values())
        hi_edge = max(p.hi for p in pending.values())
        read_lo = FIRST_DAY if lo_edge - FIRST_DAY <= pad else lo_edge - pad
        read_hi = LAST_DAY if LAST_DAY - hi_edge <= pad else hi_edge + pad
        with _timed(timings, "read"):
            marks = fetch_marked_dates(conn, list(pending), between=(read_lo, read_hi))
        t_group = time.perf_counter()
        unfinished: dict[str, _Plan] = {}
        for uid, plan in pending.items():
            groups = [
                r
                for r in expected_runs(uid, marks.get(uid, []), plan.today)
                if _intersects(r, plan.lo, plan.hi)
            ]
            # A streak reaching the edge of what was read may go on beyond it: read further.
            if groups and (
                (groups[0].start_date == read_lo and read_lo > FIRST_DAY)
                or (groups[-1].end_date == read_hi and read_hi < LAST_DAY)
            ):
                unfinished[uid] = plan
                continue
            protected_spans = {(r.start_date, r.end_date) for r in plan.protected}
            plan.expected = [g for g in groups if (g.start_date, g.end_date) not in protected_spans]
            plan.check_lo = min([plan.lo, *(g.start_date for g in groups)])
            plan.check_hi = max([plan.hi, *(g.end_date for g in groups)])
            plan.marks = [d for d in marks.get(uid, []) if plan.check_lo <= d <= plan.check_hi]
        if timings is not None:
            spent = (time.perf_counter() - t_group) * 1000
            timings["compute"] = timings.get("compute", 0.0) + spent
        pending = unfinished
        pad = pad * 4


def _take_backups(
    conn: Connection,
    plans: dict[str, _Plan],
    outcomes: dict[str, UserOutcome],
    options: BatchOptions,
    now: datetime,
) -> None:
    if options.backup == BACKUP_NEVER:
        return
    wanted = [uid for uid, outcome in outcomes.items() if options.backup == BACKUP_ALWAYS or outcome.changed]
    if not wanted:
        return
    if options.partial and options.backup != BACKUP_ALWAYS:
        everything = fetch_runs(conn, wanted)
    else:
        everything = {uid: plans[uid].touched + plans[uid].protected for uid in wanted}
    made = [
        make_backup(
            uid,
            everything.get(uid, []),
            now,
            reason=options.backup_reason,
            operation_id=options.operation_id,
        )
        for uid in wanted
    ]
    for saved in save_backups(conn, made):
        outcomes[saved.user_id].backup = saved


def _write(
    conn: Connection,
    to_delete: list[Run],
    to_deactivate: list[Run],
    to_insert: list[Run],
    to_activate: list[Run],
) -> None:
    """Apply the writes in an order the one-active index and no-overlap constraint accept."""
    for part in chunks(to_delete):
        conn.execute(
            delete(runs).where(
                runs.c.user_id.in_({r.user_id for r in part}),
                runs.c.id.in_([r.id for r in part]),
            )
        )
    _set_active(conn, to_deactivate, False)
    if to_insert:
        conn.execute(
            insert(runs),
            [
                {
                    "user_id": r.user_id,
                    "start_date": r.start_date,
                    "end_date": r.end_date,
                    "day_count": r.day_count,
                    "active": r.active,
                }
                for r in to_insert
            ],
        )
    _set_active(conn, to_activate, True)


def _set_active(conn: Connection, targets: list[Run], value: bool) -> None:
    for part in chunks(targets):
        conn.execute(
            update(runs)
            .where(
                and_(
                    runs.c.user_id.in_({r.user_id for r in part}),
                    runs.c.id.in_([r.id for r in part]),
                )
            )
            .values(active=value)
        )


def _validate(
    conn: Connection, plans: dict[str, _Plan], outcomes: dict[str, UserOutcome], *, partial: bool
) -> None:
    """Check every invariant on each user's runs as they now stand, against the planned marks.

    Users whose runs were written are re-read; for the others the runs read under the lock at
    the start are the runs that stand (nothing was written), so they are checked as read.
    Checking against the same read of the marks the plan used (not a fresh one) keeps a mark
    the app writes meanwhile from failing a correct rebuild; that mark is the next rebuild's.
    """
    changed = [uid for uid, outcome in outcomes.items() if outcome.changed]
    after: dict[str, list[Run]] = {}
    if changed and partial:
        lo = min(plans[u].check_lo for u in changed) - ONE_DAY
        hi = max(plans[u].check_hi for u in changed) + ONE_DAY
        min_yesterday = min(plans[u].today for u in changed) - 2 * ONE_DAY
        after = fetch_runs(conn, changed, touching=(lo, hi), active_after=min_yesterday)
    elif changed:
        after = fetch_runs(conn, changed)
    written = set(changed)
    for uid, plan in plans.items():
        if uid in written:
            mine = after.get(uid, [])
        else:
            mine = sorted(plan.touched + plan.protected, key=lambda r: (r.start_date, r.id or 0))
        near = [r for r in mine if _intersects(r, plan.check_lo - ONE_DAY, plan.check_hi + ONE_DAY)]
        window = (plan.check_lo, plan.check_hi)
        outcomes[uid].violations = check_invariants(
            uid, near, plan.marks, plan.today, window=window, flags=False
        ) + check_active_flags(uid, mine, plan.today)
