"""The rebuild engine: one batch of users, full or partial, inside the caller's transaction.

Single-user rebuilds are a batch of one; bulk rebuilds are many batches. Per batch it is a
fixed number of statements whatever the batch size: lock, read runs, read marks, (backups),
delete, deactivate, insert, activate, re-read, so the cost per user is a few rows of I/O and
a little Python. Only runs whose dates are wrong are replaced; right ones keep their ids.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, delete, insert, update
from sqlalchemy.exc import SQLAlchemyError

from potato_ops.db import history
from potato_ops.db.backups import take_backups
from potato_ops.db.engine import chunks, lock_users, run_prepared
from potato_ops.db.reads import fetch_marked_dates, fetch_runs, fetch_user, fetch_user_and_flag
from potato_ops.db.schema import RUNS_V2_FLAG, runs
from potato_ops.db.timezone_log import change_timezone
from potato_ops.domain.dates import ONE_DAY, local_today, parse_date_range, validate_timezone
from potato_ops.domain.invariants import check_active_flags, check_invariants
from potato_ops.domain.models import Backup, RebuildResult, Run, User, ValidationResult, Violation
from potato_ops.domain.runs import diff_runs, earliest_active_end, expected_runs, should_be_active
from potato_ops.ops.compare import Span, compare_batch, runs_and_grouping
from potato_ops.ops.database import Database, Rollback
from potato_ops.ops.single_read import UserRead, read_runs, read_user

log = logging.getLogger("potato_ops")

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
class _Premarks:
    """Marks read ahead of planning: the grouping of every marked date of the users in [lo, hi]."""

    lo: date
    hi: date
    spans: dict[str, list[Span]]


def _padded(lo: date, hi: date, pad: timedelta) -> tuple[date, date]:
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
        return _rebuild_in_python(conn, batch, options, now, timings, {ids[0]: grouping}, {ids[0]: stored})
    if options.partial or options.backup == BACKUP_ALWAYS:
        return _rebuild_in_python(conn, batch, options, now, timings, {})
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
    outcomes.update(_rebuild_in_python(conn, redo, options, now, timings, found.differ))
    return {uid: outcomes[uid] for uid in ids}


def _reads_whole(options: BatchOptions) -> bool:
    """Return True when a single-user rebuild reads every run: full, or backed up (all runs)."""
    return not options.partial or options.backup == BACKUP_ALWAYS


def _marks_window(options: BatchOptions) -> tuple[date, date] | None:
    """Return the marks a single-user read takes ahead: None (all, grouped) for a full rebuild."""
    if not options.partial:
        return None
    return _padded(options.from_date or FIRST_DAY, options.to_date or LAST_DAY, _MARK_PAD)


def _rebuild_read_user(conn: Connection, read: UserRead, options: BatchOptions, now: datetime) -> UserOutcome:
    """Rebuild one user, locked and read whole by the caller (``read_user``), from that read.

    A partial rebuild's marks are those read ahead near the window; marks further out are
    read only if a streak reaches the edge of that read.
    """
    uid = read.user.id
    window = _marks_window(options)
    if window is None:
        return _rebuild_in_python(
            conn, [read.user], options, now, None, {uid: read.grouping}, {uid: read.runs}
        )[uid]
    pre = _Premarks(window[0], window[1], {uid: read.grouping})
    return _rebuild_in_python(conn, [read.user], options, now, None, {}, {uid: read.runs}, pre)[uid]


def _rebuild_in_python(
    conn: Connection,
    batch: Sequence[User],
    options: BatchOptions,
    now: datetime,
    timings: dict[str, float] | None,
    grouped: dict[str, list[Span]],
    stored: dict[str, list[Run]] | None = None,
    premarks: _Premarks | None = None,
) -> dict[str, UserOutcome]:
    """Rebuild the users by diffing in Python; ``grouped`` and ``stored`` hold what was read."""
    if not batch:
        return {}
    ids = [u.id for u in batch]
    f = options.from_date or FIRST_DAY
    t = options.to_date or LAST_DAY
    todays = {u.id: local_today(u.timezone, now) for u in batch}
    earliest_end = earliest_active_end(min(todays.values(), default=now.date()))

    # Every run is read when a backup of every user is wanted anyway (one read, not two);
    # otherwise a partial rebuild reads only the runs near its window and the flagged ones.
    read_all = not options.partial or options.backup == BACKUP_ALWAYS
    if stored is None:
        with timed(timings, "read"):
            if read_all:
                stored = fetch_runs(conn, ids)
            else:
                near = (f - ONE_DAY, t + ONE_DAY)
                stored = fetch_runs(conn, ids, touching=near, active_after=earliest_end)
    plans: dict[str, _Plan] = {}
    for user in batch:
        mine = stored.get(user.id, [])
        touched = [r for r in mine if _intersects(r, f - ONE_DAY, t + ONE_DAY)]
        protected = [r for r in mine if not _intersects(r, f - ONE_DAY, t + ONE_DAY)]
        lo = min([f, *(r.start_date for r in touched)])
        hi = max([t, *(r.end_date for r in touched)])
        plans[user.id] = _Plan(user, todays[user.id], touched, protected, lo, hi, complete=read_all)

    _plan_expected(conn, plans, partial=options.partial, timings=timings, grouped=grouped, premarks=premarks)

    t_diff = time.perf_counter()
    outcomes: dict[str, UserOutcome] = {}
    to_delete: list[Run] = []
    to_deactivate: list[Run] = []
    to_insert: list[Run] = []
    to_activate: list[Run] = []
    for uid, plan in plans.items():
        t_user = time.perf_counter()
        diff = diff_runs(plan.touched, plan.expected)
        deactivate = list(diff.deactivate)
        activate = list(diff.activate)
        for r in plan.protected:
            should = should_be_active(r.start_date, r.end_date, plan.today)
            if r.active and not should:
                deactivate.append(r)
            elif should and not r.active:
                activate.append(r)
        plan.flags_set = {r.id: False for r in deactivate if r.id is not None}
        plan.flags_set.update((r.id, True) for r in activate if r.id is not None)
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
            own_ms=plan.own_ms + (time.perf_counter() - t_user) * 1000,
        )

    if timings is not None:
        timings["compute"] = timings.get("compute", 0.0) + (time.perf_counter() - t_diff) * 1000
    with timed(timings, "backup"):
        _take_backups(conn, plans, outcomes, options, now)
    with timed(timings, "write"):
        _write(conn, to_delete, to_deactivate, to_insert, to_activate)
    with timed(timings, "validate"):
        _validate(conn, plans, outcomes, partial=options.partial, keep_runs_after=options.keep_runs_after)
    return outcomes


def _plan_expected(
    conn: Connection,
    plans: dict[str, _Plan],
    *,
    partial: bool,
    timings: dict[str, float] | None = None,
    grouped: dict[str, list[Span]] | None = None,
    premarks: _Premarks | None = None,
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
    pad = _MARK_PAD
    while pending:
        lo_edge = min(p.lo for p in pending.values())
        hi_edge = max(p.hi for p in pending.values())
        spans: dict[str, list[Span]] | None = None
        marks = {}
        if premarks is not None and premarks.lo <= lo_edge and hi_edge <= premarks.hi:
            read_lo, read_hi, spans = premarks.lo, premarks.hi, premarks.spans
        else:
            read_lo, read_hi = _padded(lo_edge, hi_edge, pad)
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


# A few rows (a single-user rebuild's usual writes) go by these statements, built once, one
# parameter set per run: an IN list is compiled anew for each call, which costs more.
_FEW_ROWS = 8
_DELETE_RUN = delete(runs).where(runs.c.user_id == bindparam("uid"), runs.c.id == bindparam("rid"))
_SET_RUN_ACTIVE = (
    update(runs)
    .where(runs.c.user_id == bindparam("uid"), runs.c.id == bindparam("rid"))
    .values(active=bindparam("flag"))
)
_INSERT_RUNS = insert(runs)


def _write(
    conn: Connection,
    to_delete: list[Run],
    to_deactivate: list[Run],
    to_insert: list[Run],
    to_activate: list[Run],
) -> None:
    """Apply the writes in an order the one-active index and no-overlap constraint accept."""
    if 0 < len(to_delete) <= _FEW_ROWS:
        run_prepared(conn, _DELETE_RUN, [{"uid": r.user_id, "rid": r.id} for r in to_delete])
    else:
        for part in chunks(to_delete):
            conn.execute(
                delete(runs).where(
                    runs.c.user_id.in_({r.user_id for r in part}),
                    runs.c.id.in_([r.id for r in part]),
                )
            )
    _set_active(conn, to_deactivate, False)
    if to_insert:
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
                for r in to_insert
            ],
        )
    _set_active(conn, to_activate, True)


def _set_active(conn: Connection, targets: list[Run], value: bool) -> None:
    if 0 < len(targets) <= _FEW_ROWS:
        run_prepared(conn, _SET_RUN_ACTIVE, [{"uid": r.user_id, "rid": r.id, "flag": value} for r in targets])
        return
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


def rebuild_user_runs(
    db: Database,
    user_id: str,
    from_date: date | str | None = None,
    to_date: date | str | None = None,
    *,
    backup: bool = True,
    dry_run: bool = False,
    timezone: str | None = None,
) -> RebuildResult:
    """Rebuild one user's runs (all, or those touching the range) in one transaction.

    Backup, rebuild and validation commit together; on any violation nothing is
    committed and ``success`` is False. A dry run computes the same and rolls back.
    With ``timezone``, the user's zone changes (logged) in the same transaction first, so a
    dry run shows the active flags the move would give and rolls both back.
    """
    if timezone is not None:
        validate_timezone(timezone)
    lo, hi = parse_date_range(from_date, to_date)
    options = BatchOptions(
        uuid.uuid4().hex,
        lo,
        hi,
        # A rebuild that changes nothing keeps no backup: the backups of a user then tell what
        # there was before each change, not how often a cell was run.
        backup=BACKUP_CHANGED if backup else BACKUP_NEVER,
        backup_reason="dry_run" if dry_run else "rebuild",
        keep_runs_after=True,
    )
    kind = history.PARTIAL_REBUILD if options.partial else history.REBUILD
    started = db.now()
    t0 = time.perf_counter()
    outcome: UserOutcome | None = None
    error: str | None = None
    user: User | None = None
    flag = False
    runs_after: list[Run] = []
    try:
        with db.write() as conn:
            # Read in the rebuild's own transaction: two connections and their round
            # trips fewer. UserNotFoundError rolls back a transaction that wrote nothing.
            if _reads_whole(options):
                # The lock first, in a statement of its own, so that the one read after it
                # (the user, the flag, the runs and the marks) sees every earlier commit.
                lock_users(conn, [user_id])
                if timezone is not None:
                    change_timezone(conn, user_id, timezone, started)
                read = read_user(conn, user_id, RUNS_V2_FLAG, _marks_window(options))
                user, flag = read.user, read.flag
                outcome = _rebuild_read_user(conn, read, options, started)
            else:  # a window without a backup: only the runs near it are read
                if timezone is not None:
                    change_timezone(conn, user_id, timezone, started)
                user, flag = fetch_user_and_flag(conn, user_id, RUNS_V2_FLAG)
                outcome = rebuild_batch(conn, [user], options, started)[user.id]
            if outcome.success:
                if outcome.runs_after is not None:
                    runs_after = outcome.runs_after
                else:  # a window-only read of an unchanged user
                    runs_after = fetch_runs(conn, [user.id]).get(user.id, [])
            if dry_run or not outcome.success:
                raise Rollback
            duration = (time.perf_counter() - t0) * 1000
            entry = history_entry(
                options,
                outcome,
                user_id=user.id,
                kind=kind,
                started=started,
                finished=db.now(),
                duration_ms=duration,
            )
            history.record_history(conn, [entry])
    except Rollback:
        pass
    except SQLAlchemyError as exc:
        if user is None:
            raise  # the user could not even be read: nothing to report on
        error = f"{exc.__class__.__name__}: {getattr(exc, 'orig', exc)}"
        log.warning("rebuild of %s rolled back: %s", user_id, error)
    assert user is not None  # read first in the transaction, or raised
    duration = (time.perf_counter() - t0) * 1000
    if outcome is None:
        outcome = UserOutcome(user.id)
    success = error is None and outcome.success
    if not success and not dry_run:
        with db.write() as conn:
            entry = history_entry(
                options,
                outcome,
                user_id=user.id,
                kind=kind,
                started=started,
                finished=db.now(),
                duration_ms=duration,
                error=error or "invariant violations",
            )
            history.record_history(conn, [entry])
    saved_backup = outcome.backup
    if saved_backup is not None and (dry_run or not success):
        saved_backup = replace(saved_backup, id=None)  # rolled back: not in the database
    return RebuildResult(
        success=success,
        operation_id=options.operation_id,
        runs_deleted=outcome.runs_deleted,
        runs_created=outcome.runs_created,
        total_days_processed=outcome.days_processed,
        duration_ms=duration,
        invariant_violations=outcome.violations,
        backup=saved_backup,
        user_id=user.id,
        dry_run=dry_run,
        from_date=lo,
        to_date=hi,
        runs_unchanged=outcome.runs_unchanged,
        active_flags_changed=outcome.active_flags_changed,
        deleted_runs=outcome.deleted_runs,
        created_runs=outcome.created_runs,
        feature_flag_enabled=flag,
        error=error,
        runs_after=runs_after if success else [],
    )


def validate_rebuild_results(
    db: Database, user_id: str, before_runs: Sequence[Run], after_runs: Sequence[Run]
) -> ValidationResult:
    """Check after_runs against the user's marks and every invariant.

    ``before_runs`` is the state before the rebuild; it is reported on, never trusted.
    """
    with db.read() as conn:
        user = fetch_user(conn, user_id)
        marks = fetch_marked_dates(conn, [user_id]).get(user_id, [])
    violations = check_invariants(user_id, list(after_runs), marks, local_today(user.timezone, db.now()))
    if before_runs and not after_runs and marks:
        log.info("user %s had %d runs before and none after", user_id, len(before_runs))
    return ValidationResult(not violations, violations)
