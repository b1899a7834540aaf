"""The rebuild engine: a batch of users, full or partial, inside the caller's transaction.

Bulk rebuilds are many batches; the single-user rebuild (``ops.rebuild``) reads its user whole
in one statement and hands that read over (``rebuild_read_ahead``). Per batch it is a fixed
number of statements whatever the batch size: lock, read runs, read marks, (backups), delete,
deactivate, insert, activate, re-read, so the cost per user is a few rows of I/O and a little
Python. Only runs whose dates are wrong are replaced; right ones keep their ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from potato_ops.db import history
from potato_ops.db.active_flags import set_active
from potato_ops.db.backups import take_backups
from potato_ops.db.engine import lock_users
from potato_ops.db.grouping import Span, compare_batch, runs_and_grouping
from potato_ops.db.reads import fetch_marked_dates, fetch_runs, read_runs
from potato_ops.db.run_writes import delete_runs, insert_runs
from potato_ops.domain.dates import ONE_DAY, local_today
from potato_ops.domain.invariants import check_active_flags, check_invariants
from potato_ops.domain.models import Backup, Run, User, Violation
from potato_ops.domain.runs import diff_runs, earliest_active_end, expected_runs, should_be_active

if TYPE_CHECKING:
    from sqlalchemy import Connection

FIRST_DAY = date(1, 1, 2)  # open bounds, one day inside date.min/max so +/- 1 day is safe
LAST_DAY = date(9999, 12, 30)
MARK_PAD = timedelta(days=62)  # marks read beyond a partial rebuild's window, at first

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
    # Validation re-reads each written user's runs whole (not only near the window) and keeps
    # them as the outcome's ``runs_after``: one read where the caller would make a second.
    keep_runs_after: bool = False

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
    # With ``keep_runs_after``: all the user's runs as they stand after the writes, sorted by
    # start; None when they were not all read (an unchanged user of a window-only read).
    runs_after: list[Run] | None = None
    # Time spent on this user alone (its expected runs, diff and checks), in ms; the batch's
    # set-based statements serve every user at once and are not in it.
    own_ms: float = 0.0

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
    # Set when the database grouped the marks: their count; ``marks`` then stays empty and is
    # expanded from ``expected`` (the grouping itself) only if validation finds a difference.
    grouped_days: int | None = None
    own_ms: float = 0.0  # time spent on this user alone (its expected runs), in ms
    complete: bool = False  # touched + protected hold every stored run of the user
    flags_set: dict[int, bool] = field(default_factory=dict)  # run id -> flag written

    @property
    def days(self) -> int:
        return len(self.marks) if self.grouped_days is None else self.grouped_days

    def marked_dates(self) -> list[date]:
        """Return the marks the plan was computed from (expanded from the grouping if need be)."""
        if self.grouped_days is None:
            return self.marks
        return [r.start_date + timedelta(days=k) for r in self.expected for k in range(r.day_count)]


@dataclass(frozen=True)
class Premarks:
    """Marks read ahead of planning: the grouping of every marked date of the users in [lo, hi]."""

    lo: date
    hi: date
    spans: dict[str, list[Span]]


def padded(lo: date, hi: date, pad: timedelta) -> tuple[date, date]:
    """Return [lo - pad, hi + pad], clamped (an open bound +/- pad is out of range)."""
    return (
        FIRST_DAY if lo - FIRST_DAY <= pad else lo - pad,
        LAST_DAY if LAST_DAY - hi <= pad else hi + pad,
    )


def _intersects(run: Run, lo: date, hi: date) -> bool:
    return run.end_date >= lo and run.start_date <= hi


@contextmanager
def timed(timings: dict[str, float] | None, phase: str) -> Iterator[None]:
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
    with timed(timings, "lock"):
        lock_users(conn, ids)
    # A full rebuild of several users, without a backup of each, compares in the database
    # first: the correct users cost no Python at all.
    if len(batch) == 1 and not options.partial:
        # One user: its runs and the grouping of its marks in one read, one round trip.
        with timed(timings, "read"):
            stored, grouping = runs_and_grouping(conn, ids[0])
        ahead = ReadAhead(grouped={ids[0]: grouping}, stored={ids[0]: stored})
        return rebuild_read_ahead(conn, batch, options, now, ahead, timings)
    if options.partial or options.backup == BACKUP_ALWAYS:
        return rebuild_read_ahead(conn, batch, options, now, ReadAhead(), timings)
    todays = {u.id: local_today(u.timezone, now) for u in batch}
    with timed(timings, "read"):
        found = compare_batch(conn, ids)
        same = [uid for uid in ids if uid not in found.differ]
        earliest_end = earliest_active_end(min(todays.values()))
        flagged = fetch_runs(conn, same, active_after=earliest_end)
    outcomes: dict[str, UserOutcome] = {}
    redo: list[User] = []
    for user in batch:
        uid = user.id
        today = todays[uid]
        wrong_flag = any(
            r.active != should_be_active(r.start_date, r.end_date, today) for r in flagged.get(uid, [])
        )
        if uid in found.differ or wrong_flag:
            redo.append(user)
        else:
            outcomes[uid] = UserOutcome(
                uid, runs_unchanged=found.runs.get(uid, 0), days_processed=found.marked_days.get(uid, 0)
            )
    outcomes.update(rebuild_read_ahead(conn, redo, options, now, ReadAhead(grouped=found.differ), timings))
    return {uid: outcomes[uid] for uid in ids}


@dataclass(frozen=True)
class ReadAhead:
    """What was read before planning, so the engine does not read it again.

    ``grouped``: the database's grouping of every marked day of these users (a full rebuild);
    ``stored``: every stored run of the users (None: the engine reads what it needs);
    ``premarks``: the grouping of the marks read near a partial rebuild's window.
    """

    grouped: dict[str, list[Span]] = field(default_factory=dict)
    stored: dict[str, list[Run]] | None = None
    premarks: Premarks | None = None


@dataclass
class _Writes:
    """The batch's writes, gathered over its users, applied in one pass."""

    delete: list[Run] = field(default_factory=list)
    deactivate: list[Run] = field(default_factory=list)
    insert: list[Run] = field(default_factory=list)
    activate: list[Run] = field(default_factory=list)


def rebuild_read_ahead(
    conn: Connection,
    batch: Sequence[User],
    options: BatchOptions,
    now: datetime,
    ahead: ReadAhead,
    timings: dict[str, float] | None = None,
) -> dict[str, UserOutcome]:
    """Rebuild the users (locked by the caller) by diffing in Python, from what was read ahead."""
    if not batch:
        return {}
    plans = _make_plans(conn, batch, options, now, ahead.stored, timings)
    _plan_expected(
        conn, plans, partial=options.partial, timings=timings, grouped=ahead.grouped, premarks=ahead.premarks
    )
    t_diff = time.perf_counter()
    writes = _Writes()
    outcomes = {uid: _diff_user(plan, writes) for uid, plan in plans.items()}
    if timings is not None:
        timings["compute"] = timings.get("compute", 0.0) + (time.perf_counter() - t_diff) * 1000
    with timed(timings, "backup"):
        _take_backups(conn, plans, outcomes, options, now)
    with timed(timings, "write"):
        _write(conn, writes)
    with timed(timings, "validate"):
        _validate(conn, plans, outcomes, partial=options.partial, keep_runs_after=options.keep_runs_after)
    return outcomes


def _make_plans(
    conn: Connection,
    batch: Sequence[User],
    options: BatchOptions,
    now: datetime,
    stored: dict[str, list[Run]] | None,
    timings: dict[str, float] | None,
) -> dict[str, _Plan]:
    """Return each user's plan: its stored runs split into those the window touches and the rest."""
    f = options.from_date or FIRST_DAY
    t = options.to_date or LAST_DAY
    todays = {u.id: local_today(u.timezone, now) for u in batch}
    # Every run is read when a backup of every user is wanted anyway (one read, not two);
    # otherwise a partial rebuild reads only the runs near its window and the flagged ones.
    read_all = not options.partial or options.backup == BACKUP_ALWAYS
    if stored is None:
        ids = [u.id for u in batch]
        with timed(timings, "read"):
            if read_all:
                stored = fetch_runs(conn, ids)
            else:
                near = (f - ONE_DAY, t + ONE_DAY)
                earliest_end = earliest_active_end(min(todays.values(), default=now.date()))
                stored = fetch_runs(conn, ids, touching=near, active_after=earliest_end)
    plans: dict[str, _Plan] = {}
    for user in batch:
        mine = stored.get(user.id, [])
        touched = [r for r in mine if _intersects(r, f - ONE_DAY, t + ONE_DAY)]
        protected = [r for r in mine if not _intersects(r, f - ONE_DAY, t + ONE_DAY)]
        lo = min([f, *(r.start_date for r in touched)])
        hi = max([t, *(r.end_date for r in touched)])
        plans[user.id] = _Plan(user, todays[user.id], touched, protected, lo, hi, complete=read_all)
    return plans


def _diff_user(plan: _Plan, writes: _Writes) -> UserOutcome:
    """Return what the plan does to its user, adding its writes to ``writes``."""
    t_user = time.perf_counter()
    diff = diff_runs(plan.touched, plan.expected)
    deactivate = list(diff.deactivate)
    activate = list(diff.activate)
    for r in plan.protected:  # outside the window only the flag may change
        should = should_be_active(r.start_date, r.end_date, plan.today)
        if r.active and not should:
            deactivate.append(r)
        elif should and not r.active:
            activate.append(r)
    plan.flags_set = {r.id: False for r in deactivate if r.id is not None}
    plan.flags_set.update((r.id, True) for r in activate if r.id is not None)
    writes.delete += diff.delete
    writes.deactivate += deactivate
    writes.insert += diff.create
    writes.activate += activate
    return UserOutcome(
        plan.user.id,
        runs_deleted=len(diff.delete),
        runs_created=len(diff.create),
        runs_unchanged=len(diff.keep),
        active_flags_changed=len(deactivate) + len(activate),
        days_processed=plan.days,
        deleted_runs=list(diff.delete),
        created_runs=list(diff.create),
        own_ms=plan.own_ms + (time.perf_counter() - t_user) * 1000,
    )


def _plan_expected(
    conn: Connection,
    plans: dict[str, _Plan],
    *,
    partial: bool,
    timings: dict[str, float] | None = None,
    grouped: dict[str, list[Span]] | None = None,
    premarks: Premarks | None = None,
) -> None:
    """Read the marks around each user's window and compute the runs it should hold.

    A full rebuild takes the runs of the users in ``grouped`` from there (the database's
    grouping of all their marks) and reads the others' marks. A partial one starts from
    ``premarks`` (marks read, and grouped, already) when they cover every window and its
    touched runs.
    """
    if not plans:
        return
    if not partial:
        known = grouped or {}
        unknown = [uid for uid in plans if uid not in known]
        with timed(timings, "read"):
            marks = fetch_marked_dates(conn, unknown) if unknown else {}
        with timed(timings, "compute"):
            for uid, plan in plans.items():
                t_user = time.perf_counter()
                if uid in known:
                    plan.expected = [
                        Run(None, uid, s, e, n, should_be_active(s, e, plan.today)) for s, e, n in known[uid]
                    ]
                    plan.grouped_days = sum(n for _s, _e, n in known[uid])
                else:
                    plan.marks = marks.get(uid, [])
                    plan.expected = expected_runs(uid, plan.marks, plan.today)
                plan.own_ms += (time.perf_counter() - t_user) * 1000
        return

    pending = dict(plans)
    pad = MARK_PAD
    while pending:
        lo_edge = min(p.lo for p in pending.values())
        hi_edge = max(p.hi for p in pending.values())
        spans: dict[str, list[Span]] | None = None
        marks = {}
        if premarks is not None and premarks.lo <= lo_edge and hi_edge <= premarks.hi:
            read_lo, read_hi, spans = premarks.lo, premarks.hi, premarks.spans
        else:
            read_lo, read_hi = padded(lo_edge, hi_edge, pad)
            with timed(timings, "read"):
                marks = fetch_marked_dates(conn, list(pending), between=(read_lo, read_hi))
        premarks = None
        t_group = time.perf_counter()
        unfinished: dict[str, _Plan] = {}
        for uid, plan in pending.items():
            if spans is None:
                found = expected_runs(uid, marks.get(uid, []), plan.today)
            else:  # the same runs, grouped by the database
                found = [
                    Run(None, uid, s, e, n, should_be_active(s, e, plan.today))
                    for s, e, n in spans.get(uid, [])
                ]
            groups = [r for r in found if _intersects(r, plan.lo, plan.hi)]
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
            if spans is None:
                plan.marks = [d for d in marks.get(uid, []) if plan.check_lo <= d <= plan.check_hi]
            else:  # the marks in the check range are the days of the groups, which span it
                plan.marks = [g.start_date + timedelta(days=k) for g in groups for k in range(g.day_count)]
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
    owned = [(uid, everything.get(uid, [])) for uid in wanted]
    reason, operation_id = options.backup_reason, options.operation_id
    for saved in take_backups(conn, owned, now, reason=reason, operation_id=operation_id):
        outcomes[saved.user_id].backup = saved


def _write(conn: Connection, writes: _Writes) -> None:
    """Apply the writes in an order the one-active index and no-overlap constraint accept."""
    delete_runs(conn, [(r.user_id, r.id) for r in writes.delete])
    set_active(conn, [(r.user_id, r.id) for r in writes.deactivate], False)
    insert_runs(conn, writes.insert)
    set_active(conn, [(r.user_id, r.id) for r in writes.activate], True)


def _validate(
    conn: Connection,
    plans: dict[str, _Plan],
    outcomes: dict[str, UserOutcome],
    *,
    partial: bool,
    keep_runs_after: bool = False,
) -> None:
    """Check every invariant on each user's runs as they now stand, against the planned marks.

    Users whose runs were written are re-read; for the others the runs read under the lock at
    the start are the runs that stand (nothing was written), so they are checked as read.
    Checking against the same read of the marks the plan used (not a fresh one) keeps a mark
    the app writes meanwhile from failing a correct rebuild; that mark is the next rebuild's.

    A partial rebuild re-reads only the runs near its window, and flagged or recent ones: the
    runs that leaves out are inactive and end before the rule's earliest active end, so they
    break no flag rule and lie outside the window. With ``keep_runs_after`` a full rebuild's
    written user is re-read whole; a partial one's runs after are the re-read runs plus those
    its read under the lock holds further out (or, when it did not read them all, a whole
    re-read).
    """
    changed = [uid for uid, outcome in outcomes.items() if outcome.changed]
    after: dict[str, list[Run]] = {}
    # A partial rebuild re-reads the runs near its windows; with every run read under the
    # lock (``complete``), the runs it leaves are those plus the ones read further out.
    near_only = partial and (not keep_runs_after or all(plans[u].complete for u in changed))
    if changed and near_only:
        lo = min(plans[u].check_lo for u in changed) - ONE_DAY
        hi = max(plans[u].check_hi for u in changed) + ONE_DAY
        earliest_end = earliest_active_end(min(plans[u].today for u in changed))
        if len(changed) == 1:
            after = {changed[0]: read_runs(conn, changed[0], (lo, hi, earliest_end))}
        else:
            after = fetch_runs(conn, changed, touching=(lo, hi), active_after=earliest_end)
    elif len(changed) == 1:  # the single-user rebuild: a prepared statement, no IN list
        after = {changed[0]: read_runs(conn, changed[0])}
    elif changed:
        after = fetch_runs(conn, changed)
    written = set(changed)
    for uid, plan in plans.items():
        t_user = time.perf_counter()
        _check_user(uid, plan, outcomes[uid], written, after, partial=partial)
        outcomes[uid].own_ms += (time.perf_counter() - t_user) * 1000
        if keep_runs_after:
            if uid in written:
                mine = after.get(uid, [])
                outcomes[uid].runs_after = _with_unread(mine, plan) if near_only else mine
            elif plan.complete:  # nothing written: the runs read under the lock stand
                outcomes[uid].runs_after = _by_start(plan.touched + plan.protected)


def _with_unread(reread: list[Run], plan: _Plan) -> list[Run]:
    """Return the runs re-read near the window and, as written, the runs read under the lock
    that the re-read left out (outside the window: untouched but for a flag the rebuild set).
    """
    seen = {r.id for r in reread}
    kept = [
        r if r.id not in plan.flags_set else replace(r, active=plan.flags_set[r.id])
        for r in plan.protected
        if r.id is not None and r.id not in seen
    ]
    return _by_start([*reread, *kept])


def _check_user(
    uid: str,
    plan: _Plan,
    outcome: UserOutcome,
    written: set[str],
    after: dict[str, list[Run]],
    *,
    partial: bool,
) -> None:
    """Set the violations of one user's runs as they now stand (see ``_validate``)."""
    mine = after.get(uid, []) if uid in written else _by_start(plan.touched + plan.protected)
    flags = check_active_flags(uid, mine, plan.today)
    if not partial and _spans(mine) == _spans(plan.expected):
        # Invariants 1-5 hold exactly when the runs equal the grouping of the marks.
        outcome.violations = flags
        return
    near = [r for r in mine if _intersects(r, plan.check_lo - ONE_DAY, plan.check_hi + ONE_DAY)]
    window = (plan.check_lo, plan.check_hi)
    outcome.violations = (
        check_invariants(uid, near, plan.marked_dates(), plan.today, window=window, flags=False) + flags
    )


def _by_start(found: Sequence[Run]) -> list[Run]:
    """Return the runs in the order ``fetch_runs`` gives them: by start, then id."""
    return sorted(found, key=lambda r: (r.start_date, r.id or 0))


def _spans(found: Sequence[Run]) -> list[Span]:
    return [(r.start_date, r.end_date, r.day_count) for r in found]


def history_entry(
    options: BatchOptions,
    outcome: UserOutcome | None,
    *,
    user_id: str,
    kind: str,
    started: datetime,
    finished: datetime,
    duration_ms: float,
    error: str | None = None,
) -> history.HistoryEntry:
    """Return the rebuild-history entry of one user's rebuild (single-user and bulk alike)."""
    return history.HistoryEntry(
        operation_id=options.operation_id,
        user_id=user_id,
        kind=kind,
        started_at=started,
        finished_at=finished,
        duration_ms=duration_ms,
        success=error is None and outcome is not None and outcome.success,
        runs_deleted=outcome.runs_deleted if outcome else 0,
        runs_created=outcome.runs_created if outcome else 0,
        days_processed=outcome.days_processed if outcome else 0,
        violations=len(outcome.violations) if outcome else 0,
        from_date=options.from_date,
        to_date=options.to_date,
        error=error,
    )
