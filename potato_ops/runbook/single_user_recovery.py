"""01 single-user recovery, whose steps 02 (partial rebuild) and 08 (troubleshooting) share.

Identify the user and read their state, rebuild (for real or as a dry run), validate the
result, roll back when validation fails, and draw the calendar (02's range check is in
``runbook.partial_rebuild``). A step whose user could not be found is skipped and
says why, so a notebook runs to its verdict on any database, even an empty one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

import polars as pl

from potato_ops.charts.calendar import run_calendar
from potato_ops.domain.dates import parse_date_range
from potato_ops.domain.models import DayMark, RebuildResult, Run, User, Violation
from potato_ops.errors import BackupError, UserNotFoundError
from potato_ops.runbook.check_token import runbook_step
from potato_ops.runbook.display import Chart, Shown, Verdict, runs_frame, violations_frame
from potato_ops.runbook.dry_run_verdict import dry_run_verdict
from potato_ops.runbook.incident import incident_backup
from potato_ops.runbook.params import SingleUserParams, UserRef
from potato_ops.runbook.session import Session

if TYPE_CHECKING:
    from potato_ops.runbook.partial_rebuild import RangeIsolation

FULL_REBUILD_TARGET_MS = 1000.0  # playbook: <1 s for a typical user (365 days)


def partial_target_ms(from_date: date | None, to_date: date | None, today: date) -> float:
    """Return the playbook's duration target for a rebuild of this range."""
    if from_date is None and to_date is None:
        return FULL_REBUILD_TARGET_MS
    span = ((to_date or today) - (from_date or (to_date or today) - timedelta(days=365))).days + 1
    return 500.0 if span <= 30 else 2000.0 if span <= 180 else 5000.0


@dataclass(frozen=True, repr=False)
class UserSnapshot(Shown):
    """The user a procedure works on and their state before it acts."""

    ref: UserRef
    user: User | None
    problem: str = ""  # why there is no user; empty when found
    local_today: date | None = None
    runs: list[Run] = field(default_factory=list)
    marks: list[DayMark] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def marked(self) -> list[date]:
        """Return the marked days (value true)."""
        return [m.date for m in self.marks if m.value]

    @property
    def unmarked(self) -> list[date]:
        """Return the days the user un-marked (value false rows)."""
        return [m.date for m in self.marks if not m.value]

    def title(self) -> str:
        return "Identify the user, check their current state"

    def lines(self) -> list[tuple[str, str]]:
        if self.user is None:
            return [("problem", self.problem)]
        u = self.user
        return [
            (
                "info",
                f"user {u.id} <{u.email or 'no email'}>, timezone {u.timezone}, "
                f"local today {self.local_today}",
            ),
            ("info", f"current runs: {len(self.runs)} ({sum(r.active for r in self.runs)} flagged active)"),
            (
                "info",
                f"day marks: {len(self.marks)} ({len(self.marked)} marked, {len(self.unmarked)} un-marked)",
            ),
            (
                "ok" if not self.violations else "problem",
                f"invariant violations now: {len(self.violations)}"
                + (f" ({', '.join(sorted({v.kind for v in self.violations}))})" if self.violations else ""),
            ),
        ]

    def runs_frame(self) -> pl.DataFrame:
        """Return the current runs as a frame."""
        return runs_frame(self.runs)

    def violations_frame(self) -> pl.DataFrame:
        """Return the current violations as a frame."""
        return violations_frame(self.violations)


def identify_user(session: Session, ref: UserRef) -> UserSnapshot:
    """Return the user named by email or id with their runs, marks and current violations."""
    storage = session.storage
    if not ref.given:
        return UserSnapshot(ref, None, "no user chosen: set user_email or user_id")
    try:
        user = storage.get_user_by_email(ref.email) if ref.email else storage.get_user(ref.user_id)
    except UserNotFoundError as exc:
        return UserSnapshot(ref, None, f"{exc} in {session.database['url']}")
    current = storage.get_user_runs(user.id)
    check = storage.validate_rebuild_results(user.id, current, current)
    return UserSnapshot(
        ref,
        user,
        "",
        storage.local_today(user),
        current,
        storage.get_user_day_marks(user.id),
        check.invariant_violations,
    )


@dataclass(frozen=True, repr=False)
class RebuildStep(Shown):
    """A rebuild's result with the runs before and after (for a dry run: as it would leave them)."""

    result: RebuildResult | None
    before: list[Run] = field(default_factory=list)
    after: list[Run] = field(default_factory=list)
    target_ms: float = FULL_REBUILD_TARGET_MS
    skipped: str = ""

    @property
    def changed(self) -> bool:
        """Return True when the rebuild changes (or would change) any run or flag."""
        r = self.result
        return r is not None and bool(r.runs_deleted or r.runs_created or r.active_flags_changed)

    def title(self) -> str:
        return "Execute the rebuild"

    def lines(self) -> list[tuple[str, str]]:
        r = self.result
        if r is None:
            return [("skip", f"skipped: {self.skipped}")]
        mode = "DRY RUN (rolled back): " if r.dry_run else ""
        window = ""
        if r.from_date or r.to_date:
            window = f" for {r.from_date or '…'} .. {r.to_date or '…'}"
        found = [
            (
                "ok" if r.success else "problem",
                f"{mode}rebuild {'successful' if r.success else 'failed, nothing committed'}{window} "
                f"(operation {r.operation_id})",
            ),
            (
                "info",
                f"deleted: {r.runs_deleted} runs, created: {r.runs_created}, unchanged: {r.runs_unchanged}",
            ),
            (
                "info",
                f"active flags changed: {r.active_flags_changed}; "
                f"marked days processed: {r.total_days_processed}",
            ),
            (
                "ok" if r.duration_ms <= self.target_ms else "warn",
                f"duration: {r.duration_ms:.1f} ms (target < {self.target_ms:.0f} ms)",
            ),
        ]
        if r.backup is not None:
            kept = (
                f"backup {r.backup.id} kept" if r.backup.id is not None else "backup not kept (rolled back)"
            )
            found.append(("info", f"{kept}: {r.backup.metadata.total_runs} runs"))
        found.extend(("problem", f"violation {v.kind}: {v.detail}") for v in r.invariant_violations)
        if r.error:
            found.append(("problem", f"error: {r.error}"))
        return found

    def changes_frame(self) -> pl.DataFrame:
        """Return the runs deleted and created (change, id, start_date, end_date, day_count, active)."""
        if self.result is None:
            return (
                runs_frame([])
                .with_columns(pl.lit("").alias("change"))
                .select("change", pl.all().exclude("change"))
            )
        deleted = runs_frame(self.result.deleted_runs).with_columns(pl.lit("deleted").alias("change"))
        created = runs_frame(self.result.created_runs).with_columns(pl.lit("created").alias("change"))
        return pl.concat([deleted, created]).select("change", pl.all().exclude("change"))


@runbook_step(writes=True)
def execute_rebuild(
    session: Session,
    snapshot: UserSnapshot,
    *,
    dry_run: bool,
    keep_backup: bool = True,
    from_date: date | str | None = None,
    to_date: date | str | None = None,
) -> RebuildStep:
    """Return the rebuild of the user's runs (all of them, or those touching the range)."""
    if snapshot.user is None or snapshot.local_today is None:
        return RebuildStep(None, skipped=snapshot.problem)
    from_date, to_date = parse_date_range(from_date, to_date)
    storage = session.storage
    result = storage.rebuild_user_runs(
        snapshot.user.id, from_date, to_date, backup=keep_backup, dry_run=dry_run
    )
    # A failed rebuild was rolled back: the runs stand as they were. A validated one (or a dry
    # run of one) reports the runs it left, read in its own transaction.
    after = list(result.runs_after) if result.success else list(snapshot.runs)
    target = partial_target_ms(from_date, to_date, snapshot.local_today)
    return RebuildStep(result, list(snapshot.runs), after, target)


@dataclass(frozen=True, repr=False)
class ValidationStep(Shown):
    """The invariants checked on the runs after the rebuild."""

    valid: bool | None
    violations: list[Violation] = field(default_factory=list)
    projected: bool = False
    skipped: str = ""

    def title(self) -> str:
        return "Post-recovery validation"

    def lines(self) -> list[tuple[str, str]]:
        if self.valid is None:
            return [("skip", f"skipped: {self.skipped}")]
        what = "the runs the dry run would leave" if self.projected else "the stored runs"
        if self.valid:
            return [("ok", f"all invariants satisfied by {what}")]
        return [("problem", f"validation failed on {what}: {len(self.violations)} violations")] + [
            ("problem", f"{v.kind}: {v.detail}") for v in self.violations[:20]
        ]


def post_recovery_validation(session: Session, snapshot: UserSnapshot, step: RebuildStep) -> ValidationStep:
    """Return the validation of the runs after the rebuild against the user's marks."""
    if snapshot.user is None or step.result is None:
        return ValidationStep(None, skipped=snapshot.problem or step.skipped)
    checked = session.storage.validate_rebuild_results(snapshot.user.id, step.before, step.after)
    return ValidationStep(checked.valid, checked.invariant_violations, step.result.dry_run)


@dataclass(frozen=True, repr=False)
class RollbackStep(Shown):
    """Whether the runs had to be put back, and how."""

    needed: bool
    done: bool
    detail: str
    restored: list[Run] = field(default_factory=list)

    def title(self) -> str:
        return "Rollback if needed"

    def lines(self) -> list[tuple[str, str]]:
        if not self.needed:
            return [("ok", self.detail)]
        return [("ok" if self.done else "problem", self.detail)]


@runbook_step(writes=True)
def rollback_if_needed(
    session: Session, snapshot: UserSnapshot, step: RebuildStep, validation: ValidationStep
) -> RollbackStep:
    """Return the rollback: restore the rebuild's backup when a committed rebuild fails validation."""
    r = step.result
    if snapshot.user is None or r is None:
        return RollbackStep(
            False, False, f"not needed: nothing was done ({snapshot.problem or step.skipped})"
        )
    if r.dry_run:
        return RollbackStep(False, False, "not needed: dry run, nothing was written")
    if not r.success:
        current = session.storage.get_user_runs(snapshot.user.id)
        same = [x.span for x in current] == [x.span for x in snapshot.runs]
        return RollbackStep(
            True,
            same,
            "the failed rebuild was rolled back by its transaction: the runs are as before"
            if same
            else "the failed rebuild was rolled back, but the runs differ from before: check who else writes",
            current,
        )
    own = [r.backup] if r.backup is not None and r.backup.id is not None else []
    picked = incident_backup(session.storage, snapshot.user.id, ticket=session.common.ticket, also=own)
    if validation.valid:
        if picked.backup is None:
            return RollbackStep(False, False, "not needed: the rebuild is valid")
        return RollbackStep(
            False, False, f"not needed: the rebuild is valid (a rollback would restore {picked.why})"
        )
    if picked.backup is None:
        return RollbackStep(
            True, False, "validation failed and no backup was kept: rebuild again or restore by hand"
        )
    try:
        restored = session.storage.restore_user_runs(snapshot.user.id, picked.backup)
    except BackupError as exc:
        return RollbackStep(True, False, f"rollback refused: {exc}")
    return RollbackStep(
        True, True, f"rollback completed: {len(restored)} runs restored from {picked.why}", restored
    )


def user_calendar(
    snapshot: UserSnapshot,
    after: list[Run] | None,
    *,
    days: int,
    after_label: str = "runs after",
    window: tuple[date | None, date | None] | None = None,
) -> Chart:
    """Return the calendar of the user's marks with the runs before and after."""
    today = snapshot.local_today or date.today()
    title = f"User {snapshot.user.email or snapshot.user.id}" if snapshot.user else "No user chosen"
    figure = run_calendar(
        snapshot.marked,
        snapshot.runs,
        after,
        end=today,
        days=days,
        title=title,
        after_label=after_label,
        unmarked=snapshot.unmarked,
        window=window,
        today=today,
    )
    return Chart("calendar", figure)


def recovery_calendar(
    snapshot: UserSnapshot,
    rebuild: RebuildStep,
    rollback: RollbackStep,
    *,
    days: int,
    window: tuple[date | None, date | None] | None = None,
) -> Chart:
    """Return the calendar with the runs before and after the rebuild (or its rollback)."""
    if rollback.done:
        return user_calendar(snapshot, rollback.restored, days=days, after_label="runs after rollback")
    if rebuild.result is None:
        return user_calendar(snapshot, None, days=days)
    label = "runs after (dry run)" if rebuild.result.dry_run else "runs after"
    return user_calendar(snapshot, rebuild.after, days=days, after_label=label, window=window)


def rebuild_verdict(
    params: SingleUserParams,
    snapshot: UserSnapshot,
    step: RebuildStep,
    validation: ValidationStep,
    rollback: RollbackStep,
    isolation: RangeIsolation | None = None,
) -> Verdict:
    """Return the one-line outcome of a single-user (or partial) rebuild and its figures."""
    figures: dict[str, object] = {**params.common.record(), "dry_run": params.dry_run}
    r = step.result
    if snapshot.user is None or r is None:
        return Verdict(f"nothing done: {snapshot.problem or step.skipped}", "problem", figures)
    figures.update(
        user_id=snapshot.user.id,
        runs_before=len(step.before),
        runs_after=len(step.after),
        runs_deleted=r.runs_deleted,
        runs_created=r.runs_created,
        active_flags_changed=r.active_flags_changed,
        duration_ms=round(r.duration_ms, 3),
        violations_before=len(snapshot.violations),
        violations_after=len(validation.violations),
        backup_id=r.backup.id if r.backup is not None else None,
        rolled_back=rollback.done,
        from_date=r.from_date,
        to_date=r.to_date,
    )
    who = snapshot.user.email or snapshot.user.id
    ops = (r.operation_id,)
    if isolation is not None and not isolation.skipped:
        figures["runs_outside_range"] = isolation.outside
        figures["runs_changed_outside_range"] = len(isolation.changed)
    isolated = isolation is None or isolation.skipped or isolation.ok
    if r.dry_run:
        if not step.changed and not snapshot.violations:
            return dry_run_verdict(params.common, 0, f"the runs of {who} are already correct", figures, ops)
        good = r.success and bool(validation.valid) and isolated
        detail = (
            f"{who}: delete {r.runs_deleted} and create {r.runs_created} runs, "
            f"{len(snapshot.violations)} violations now"
            + (", 0 after" if good else f", {len(validation.violations)} after: investigate")
        )
        return dry_run_verdict(params.common, 1, detail, figures, ops, trouble=not good)
    if not r.success:
        return Verdict(
            f"rebuild of {who} failed and was rolled back: {len(r.invariant_violations)} violations; "
            "next: run 08_troubleshooting for this user",
            "problem",
            figures,
            ops,
        )
    if not validation.valid:
        done = "rolled back to the backup" if rollback.done else "NOT rolled back"
        return Verdict(
            f"rebuild of {who} failed validation ({len(validation.violations)} violations), {done}; "
            "next: run 08_troubleshooting for this user",
            "problem",
            figures,
            ops,
        )
    if not isolated:
        return Verdict(f"partial rebuild of {who} changed runs outside its range", "problem", figures, ops)
    return Verdict(
        f"rebuilt {who}: deleted {r.runs_deleted}, created {r.runs_created} runs in {r.duration_ms:.0f} ms; "
        "all invariants satisfied",
        "ok",
        figures,
        ops,
    )
