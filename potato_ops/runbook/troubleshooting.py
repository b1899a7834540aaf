"""08 troubleshooting: the playbook's common issues checked one by one, read-only.

Without a user, only the database-wide checks run (schema, indexes, slow rebuilds, backups,
and the invariant scan, each kind of violation found named with its likely cause and the
procedure that repairs it). Nothing here writes: the debug rebuild is a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from potato_ops.domain.dates import local_today
from potato_ops.domain.models import InvariantReport, Violation, ViolationKind
from potato_ops.domain.runs import group_consecutive_dates
from potato_ops.errors import BackupError, SchemaError
from potato_ops.runbook.display import Chart, Shown, Verdict
from potato_ops.runbook.params import TroubleshootParams
from potato_ops.runbook.session import Session
from potato_ops.runbook.single_user_recovery import RebuildStep, UserSnapshot, execute_rebuild, user_calendar


@dataclass(frozen=True, repr=False)
class Findings(Shown):
    """What one troubleshooting check found: ``(state, text)`` items."""

    issue: str
    items: list[tuple[str, str]] = field(default_factory=list)
    database_wide: int = 0  # the first items are about the whole database, the rest about the user

    @property
    def problems(self) -> int:
        """Return how many items need attention."""
        return sum(1 for state, _ in self.items if state in ("problem", "warn"))

    def attention(self, *, database_wide: bool) -> list[str]:
        """Return the texts needing attention, of the whole database's items or of the user's."""
        chosen = self.items[: self.database_wide] if database_wide else self.items[self.database_wide :]
        return [text for state, text in chosen if state in ("problem", "warn")]

    def title(self) -> str:
        return self.issue

    def lines(self) -> list[tuple[str, str]]:
        return [
            (state, f"{text} (whole database)" if i < self.database_wide else text)
            for i, (state, text) in enumerate(self.items)
        ]


def check_day_marks(snapshot: UserSnapshot) -> Findings:
    """Return issue 1 ("No day_marks found for user"): the user exists and has marked days."""
    issue = 'Issue 1: "No day_marks found for user"'
    if snapshot.user is None:
        state = "skip" if not snapshot.ref.given else "problem"
        return Findings(issue, [(state, snapshot.problem)])
    items = [("ok", f"user {snapshot.user.id} exists")]
    if not snapshot.marks:
        items.append(("problem", "no day_marks rows at all: the user never marked a day"))
    elif not snapshot.marked:
        items.append(("problem", f"{len(snapshot.marks)} day_marks rows, none with value = true"))
    else:
        first, last = snapshot.marked[0], snapshot.marked[-1]
        items.append(("ok", f"{len(snapshot.marked)} marked days (value = true) from {first} to {last}"))
    return Findings(issue, items)


def _index_items(session: Session) -> list[tuple[str, str]]:
    found = session.storage.check_indexes()
    return [
        ("ok", "day_marks is keyed by (user_id, date)")
        if found.day_marks_keyed_by_user
        else (
            "problem",
            f"day_marks primary key is {found.day_marks_key}: expected (user_id, date), reads will be slow",
        ),
        ("ok", "runs has an index starting with user_id")
        if found.runs_indexed_by_user
        else ("problem", "runs has no index starting with user_id: rebuilds scan the table"),
    ]


def check_rebuild_speed(session: Session, snapshot: UserSnapshot, params: TroubleshootParams) -> Findings:
    """Return issue 2 ("Rebuild takes too long"): history size, slow rebuilds, indexes."""
    issue = f'Issue 2: "Rebuild takes too long (>{params.slow_threshold_ms / 1000:g}s)"'
    items = _index_items(session)
    slow = session.storage.get_users_with_slow_rebuild_history(params.slow_threshold_ms)
    items.append(
        (
            "ok" if not slow else "warn",
            f"users with a recorded rebuild slower than {params.slow_threshold_ms:.0f} ms: {len(slow)}",
        )
    )
    wide = len(items)
    if snapshot.user is not None:
        n = len(snapshot.marks)
        items.append(
            ("ok", f"{n} day_marks rows for this user")
            if n <= params.many_marks
            else (
                "warn",
                f"{n} day_marks rows (> {params.many_marks}): "
                "consider a partial rebuild (02_partial_rebuild)",
            )
        )
        if snapshot.user.id in slow:
            items.append(("warn", "this user's rebuilds were slow: use a partial rebuild of recent days"))
    return Findings(issue, items, wide)


def debug_rebuild(session: Session, snapshot: UserSnapshot) -> RebuildStep:
    """Return a dry-run rebuild of the user with its details (the playbook's debug procedure)."""
    return execute_rebuild(session, snapshot, dry_run=True)


@dataclass(frozen=True)
class Remedy:
    """What usually causes one kind of violation, and the procedure that repairs it."""

    cause: str
    procedure: str


# The playbook's guide, per kind: its likely cause and the notebook (or command) to run.
REMEDIES: dict[ViolationKind, Remedy] = {
    ViolationKind.MALFORMED: Remedy(
        "a run written outside the engine (by hand or by an app bug): start after end, or a day_count "
        "that does not match its dates",
        "05_error_recovery (scenario data_corruption); 01_single_user_recovery for one user",
    ),
    ViolationKind.OVERLAP: Remedy(
        "runs inserted outside the engine, or two writers rebuilding one user at once without its lock "
        "(SQLite has no constraint against overlap)",
        "05_error_recovery (scenario invariant_violations); 01_single_user_recovery for one user",
    ),
    ViolationKind.ADJACENT: Remedy(
        "a streak stored as two runs: a run split outside the engine, or the day between two runs "
        "marked with no rebuild after",
        "02_partial_rebuild over the days where the runs meet; 05_error_recovery (scenario data_corruption) "
        "for many users",
    ),
    ViolationKind.PHANTOM_DAY: Remedy(
        "a run covering an unmarked day: the day was un-marked (value false or deleted) after the run "
        "was written, or the run was stretched outside the engine",
        "02_partial_rebuild over those days; 05_error_recovery (scenario data_corruption) for many users",
    ),
    ViolationKind.UNCOVERED_DAY: Remedy(
        "marked days in no run: marks written by a backfill, import or sync with no rebuild after, "
        "or a run deleted outside the engine",
        "02_partial_rebuild over those days; 03_bulk_recovery when many users are affected",
    ),
    ViolationKind.MULTIPLE_ACTIVE: Remedy(
        "active flags set outside the engine (the one-active index missing or bypassed)",
        "05_error_recovery (scenario invariant_violations); 01_single_user_recovery for one user",
    ),
    ViolationKind.STALE_ACTIVE: Remedy(
        "an active flag that went stale at the user's local midnight, or a timezone change with no "
        "rebuild after",
        "potato-ops refresh-active for every user; 04_timezone_migration after timezone changes",
    ),
    ViolationKind.ORPHAN: Remedy(
        "runs of a user that no longer exists: the user was deleted and their runs were left behind",
        "05_error_recovery (scenario data_corruption): the runs are backed up and removed",
    ),
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def remedy_items(violations: list[Violation]) -> list[tuple[str, str]]:
    """Return one line per kind of violation found: how many, the likely cause, the procedure."""
    items: list[tuple[str, str]] = []
    for kind in ViolationKind:  # the contract's order
        found = [v for v in violations if v.kind == kind]
        if not found:
            continue
        users = len({v.user_id for v in found})
        remedy = REMEDIES[kind]
        items.append(
            (
                "problem",
                f"{kind}: {_count(len(found), 'violation')} in {_count(users, 'user')}. "
                f"Likely cause: {remedy.cause}. "
                f"Procedure: {remedy.procedure}",
            )
        )
    return items


def _scan_items(report: InvariantReport) -> list[tuple[str, str]]:
    if report.ok:
        return [("ok", f"invariant scan: all invariants hold in {report.users_scanned} users")]
    head = (
        "problem",
        f"invariant scan: {report.total} violations in {len(report.users_with_violations)} "
        f"of {report.users_scanned} users",
    )
    return [head, *remedy_items(report.violations)]


def check_invariant_causes(session: Session, snapshot: UserSnapshot, step: RebuildStep) -> Findings:
    """Return issue 3 ("Invariant violations"): the database-wide scan, then the user's rebuild.

    Each kind the scan finds is named with its likely cause and its procedure. With a user, the
    dry-run rebuild says whether the stored runs are what the marks give, and the timezone edge
    is shown.
    """
    issue = 'Issue 3: "Invariant violations after rebuild"'
    items = _scan_items(session.storage.validate_invariants())
    wide = len(items)
    if snapshot.user is None or step.result is None:
        items.append(("skip", f"user checks skipped: {snapshot.problem}"))
        return Findings(issue, items, wide)
    r = step.result
    items.append(
        (
            "ok" if not snapshot.violations else "warn",
            f"violations in this user's stored runs now: {len(snapshot.violations)}",
        )
    )
    items.extend(remedy_items(snapshot.violations))
    items.append(
        (
            "ok" if r.success else "problem",
            "a rebuild validates (dry run)"
            if r.success
            else f"a rebuild would fail: {len(r.invariant_violations)} violations",
        )
    )
    now = session.storage.now()
    utc_today, today = local_today("UTC", now), snapshot.local_today
    if today != utc_today:
        items.append(
            (
                "info",
                f"timezone edge: local today {today} in {snapshot.user.timezone} "
                f"differs from UTC's {utc_today}: "
                "the active run follows the local date",
            )
        )
    else:
        items.append(("ok", f"local today {today} in {snapshot.user.timezone} is UTC's date too"))
    if r.success:
        items.append(
            (
                "ok",
                f"stored runs equal the {len(r.runs_after)} runs the marks give: a rebuild changes nothing",
            )
            if not step.changed
            else (
                "warn",
                f"stored runs differ from what the marks give: a rebuild would delete {r.runs_deleted}, "
                f"create {r.runs_created} runs and change {r.active_flags_changed} flags: "
                "rebuild (01_single_user_recovery)",
            )
        )
    return Findings(issue, items, wide)


def check_backups(session: Session, snapshot: UserSnapshot) -> Findings:
    """Return issue 4 ("Backup restoration failed"): schema, and each backup's owner and checksum."""
    issue = 'Issue 4: "Backup restoration failed"'
    items: list[tuple[str, str]] = []
    try:
        session.storage.check_schema()
        items.append(("ok", "runs table schema matches the contract"))
    except SchemaError as exc:
        items.append(("problem", str(exc)))
    if snapshot.user is None:
        items.append(("skip", f"user checks skipped: {snapshot.problem}"))
        return Findings(issue, items, 1)
    found = session.storage.get_backups(snapshot.user.id)
    bad: list[str] = []
    for b in found:
        try:
            session.storage.verify_backup(snapshot.user.id, b)
        except BackupError as exc:
            bad.append(str(exc))
    items.append(("info" if found else "warn", f"{len(found)} backups of this user"))
    items.append(
        ("ok", "every backup passes its owner and checksum checks")
        if not bad
        else ("problem", "; ".join(bad))
    )
    return Findings(issue, items, 1)


def consecutive_groups(snapshot: UserSnapshot) -> pl.DataFrame:
    """Return the consecutive groups of the user's marks beside whether a stored run matches each."""
    stored = {(x.start_date, x.end_date) for x in snapshot.runs}
    groups = group_consecutive_dates(snapshot.marked)
    return pl.DataFrame(
        {
            "start_date": [s for s, _ in groups],
            "end_date": [e for _, e in groups],
            "days": [(e - s).days + 1 for s, e in groups],
            "stored_run_matches": [(s, e) in stored for s, e in groups],
        },
        schema={
            "start_date": pl.Date,
            "end_date": pl.Date,
            "days": pl.Int64,
            "stored_run_matches": pl.Boolean,
        },
    )


def debug_calendar(snapshot: UserSnapshot, step: RebuildStep, *, days: int) -> Chart:
    """Return the calendar with the stored runs and the runs a rebuild would give."""
    after = step.after if step.result is not None else None
    return user_calendar(snapshot, after, days=days, after_label="runs a rebuild gives")


def troubleshooting_verdict(
    params: TroubleshootParams, snapshot: UserSnapshot, *findings: Findings
) -> Verdict:
    """Return the one-line outcome, the chosen user's own findings first."""
    mine = [text for f in findings for text in f.attention(database_wide=False)]
    wide = [text for f in findings for text in f.attention(database_wide=True)]
    figures: dict[str, object] = {
        **params.common.record(),
        "user_id": snapshot.user.id if snapshot.user else None,
        "checks": sum(len(f.items) for f in findings),
        "needing_attention": len(mine) + len(wide),
        "user_findings": len(mine),
        "database_findings": len(wide),
        "violations_now": len(snapshot.violations),
    }
    if snapshot.user is None:
        if not wide:
            return Verdict("troubleshooting (database-wide checks only): every check passed", "ok", figures)
        return Verdict(
            f"troubleshooting (database-wide checks only): {len(wide)} findings need attention, "
            f"first: {wide[0]}",
            "problem",
            figures,
        )
    who = snapshot.user.email or snapshot.user.id
    rest = f"; whole database: {len(wide)} findings need attention" if wide else ""
    if mine:
        return Verdict(
            f"troubleshooting user {who}: {len(mine)} findings for this user, first: {mine[0]}{rest}",
            "problem",
            figures,
        )
    if wide:
        return Verdict(
            f"troubleshooting user {who}: nothing wrong found for this user{rest}", "problem", figures
        )
    return Verdict(f"troubleshooting user {who}: every check passed", "ok", figures)
