"""08 troubleshooting: the playbook's common issues checked one by one, read-only.

Without a user, only the database-wide checks run (schema, indexes, slow rebuilds, backups).
Nothing here writes: the debug rebuild is a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
from sqlalchemy import inspect

from potato_ops.db.backups import verify_backup
from potato_ops.domain.dates import local_today
from potato_ops.domain.runs import group_consecutive_dates
from potato_ops.errors import BackupError, SchemaError
from potato_ops.runbook.display import Chart, Shown, Verdict
from potato_ops.runbook.params import TroubleshootParams
from potato_ops.runbook.session import Session
from potato_ops.runbook.user import RebuildStep, UserSnapshot, execute_rebuild, user_calendar


@dataclass(frozen=True, repr=False)
class Findings(Shown):
    """What one troubleshooting check found: ``(state, text)`` items."""

    issue: str
    items: list[tuple[str, str]] = field(default_factory=list)

    @property
    def problems(self) -> int:
        """Return how many items need attention."""
        return sum(1 for state, _ in self.items if state in ("problem", "warn"))

    def title(self) -> str:
        return self.issue

    def lines(self) -> list[tuple[str, str]]:
        return self.items


def _no_user(issue: str, snapshot: UserSnapshot) -> Findings:
    return Findings(issue, [("skip", f"user checks skipped: {snapshot.problem}")])


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
    inspector = inspect(session.storage.engine)
    items: list[tuple[str, str]] = []
    pk = inspector.get_pk_constraint("day_marks").get("constrained_columns") or []
    items.append(
        ("ok", "day_marks is keyed by (user_id, date)")
        if pk[:2] == ["user_id", "date"]
        else ("problem", f"day_marks primary key is {pk}: expected (user_id, date), reads will be slow")
    )
    indexed = [ix["column_names"] for ix in inspector.get_indexes("runs")]
    items.append(
        ("ok", "runs has an index starting with user_id")
        if any(cols and cols[0] == "user_id" for cols in indexed)
        else ("problem", "runs has no index starting with user_id: rebuilds scan the table")
    )
    return items


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
    return Findings(issue, items)


def debug_rebuild(session: Session, snapshot: UserSnapshot) -> RebuildStep:
    """Return a dry-run rebuild of the user with its details (the playbook's debug procedure)."""
    return execute_rebuild(session, snapshot, dry_run=True)


def check_invariant_causes(session: Session, snapshot: UserSnapshot, step: RebuildStep) -> Findings:
    """Return issue 3 ("Invariant violations after rebuild"): the rebuild and the timezone edges."""
    issue = 'Issue 3: "Invariant violations after rebuild"'
    if snapshot.user is None or step.result is None:
        return _no_user(issue, snapshot)
    r = step.result
    items = [
        (
            "ok" if not snapshot.violations else "warn",
            f"violations in the stored runs now: {len(snapshot.violations)}",
        ),
        (
            "ok" if r.success else "problem",
            "a rebuild validates (dry run)"
            if r.success
            else f"a rebuild would fail: {len(r.invariant_violations)} violations",
        ),
    ]
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
    expected = group_consecutive_dates(snapshot.marked)
    stored = [(x.start_date, x.end_date) for x in snapshot.runs]
    items.append(
        ("ok", f"stored runs equal the {len(expected)} consecutive groups of the marks")
        if stored == expected
        else (
            "warn",
            f"stored runs ({len(stored)}) differ from the consecutive groups ({len(expected)}): rebuild",
        )
    )
    return Findings(issue, items)


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
        return Findings(issue, items)
    found = session.storage.get_backups(snapshot.user.id)
    bad: list[str] = []
    for b in found:
        try:
            verify_backup(snapshot.user.id, b)
        except BackupError as exc:
            bad.append(str(exc))
    items.append(("info" if found else "warn", f"{len(found)} backups of this user"))
    items.append(
        ("ok", "every backup passes its owner and checksum checks")
        if not bad
        else ("problem", "; ".join(bad))
    )
    return Findings(issue, items)


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
    """Return the one-line outcome: how many checks need attention."""
    attention = [(f.issue, text) for f in findings for state, text in f.items if state in ("problem", "warn")]
    figures: dict[str, object] = {
        **params.common.record(),
        "user_id": snapshot.user.id if snapshot.user else None,
        "checks": sum(len(f.items) for f in findings),
        "needing_attention": len(attention),
        "violations_now": len(snapshot.violations),
    }
    scope = (
        f"user {snapshot.user.email or snapshot.user.id}" if snapshot.user else "database-wide checks only"
    )
    if not attention:
        return Verdict(f"troubleshooting ({scope}): every check passed", "ok", figures)
    return Verdict(
        f"troubleshooting ({scope}): {len(attention)} findings need attention, first: {attention[0][1]}",
        "problem",
        figures,
    )
