"""06 restore from backup: choose a backup, check it, restore it, verify the restoration."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from potato_ops.domain.models import Backup, Run, Violation
from potato_ops.errors import BackupError
from potato_ops.runbook.check_token import runbook_step
from potato_ops.runbook.display import Chart, Shown, Status, Verdict
from potato_ops.runbook.dry_run_verdict import dry_run_verdict
from potato_ops.runbook.incident import incident_backup
from potato_ops.runbook.params import RestoreParams
from potato_ops.runbook.session import Session
from potato_ops.runbook.single_user_recovery import UserSnapshot, user_calendar

BACKUP_SCHEMA: dict[str, Any] = {
    "backup_id": pl.Int64,
    "timestamp": pl.Datetime("us", "UTC"),
    "runs": pl.Int64,
    "reason": pl.String,
    "operation_id": pl.String,
    "checksum": pl.String,
}


@dataclass(frozen=True, repr=False)
class BackupChoice(Shown):
    """The user's backups and the one chosen, with its integrity check."""

    backups: list[Backup] = field(default_factory=list)
    chosen: Backup | None = None
    problem: str = ""
    intact: bool = False
    why: str = ""  # which rule chose it

    def title(self) -> str:
        return "Retrieve the backup"

    def lines(self) -> list[tuple[str, str]]:
        if self.chosen is None:
            return [("problem", f"no backup available for rollback: {self.problem}")]
        b = self.chosen
        return [
            (
                "info",
                f"{len(self.backups)} backups of this user; "
                f"chosen: backup {b.id} of {b.timestamp.isoformat()}",
            ),
            *([("info", f"why: {self.why}")] if self.why else []),
            ("info", f"{b.metadata.total_runs} runs, reason {b.metadata.reason}"),
            (
                "ok" if self.intact else "problem",
                "checksum and owner verified" if self.intact else self.problem,
            ),
        ]

    def backups_frame(self) -> pl.DataFrame:
        """Return the user's backups, newest first."""
        rows = [
            (
                b.id,
                b.timestamp,
                b.metadata.total_runs,
                b.metadata.reason,
                b.metadata.operation_id,
                b.metadata.checksum[:16],
            )
            for b in self.backups
        ]
        return pl.DataFrame(rows, schema=BACKUP_SCHEMA, orient="row")


def choose_backup(
    session: Session, snapshot: UserSnapshot, backup_id: int | None, *, since: datetime | None = None
) -> BackupChoice:
    """Return the chosen backup, its owner and checksum checked; without ``backup_id``, the one
    taken before the incident's first change (by the session's ticket, else ``since``)."""
    if snapshot.user is None:
        return BackupChoice(problem=snapshot.problem)
    storage = session.storage
    found = storage.get_backups(snapshot.user.id)
    why = f"backup {backup_id} was asked for"
    if backup_id is None:
        picked = incident_backup(storage, snapshot.user.id, ticket=session.common.ticket, since=since)
        if picked.backup is None:
            return BackupChoice(found, problem=picked.why)
        chosen, why = picked.backup, picked.why
    else:
        try:
            chosen = storage.get_backup(backup_id)
        except BackupError as exc:
            return BackupChoice(found, problem=str(exc))
    try:
        storage.verify_backup(snapshot.user.id, chosen)
    except BackupError as exc:
        return BackupChoice(found, chosen, str(exc), intact=False, why=why)
    return BackupChoice(found, chosen, intact=True, why=why)


@dataclass(frozen=True, repr=False)
class RestoreStep(Shown):
    """The restore (or, in a dry run, what it would put back)."""

    restored: list[Run] = field(default_factory=list)
    dry_run: bool = True
    done: bool = False
    safety_backup: Backup | None = None
    skipped: str = ""

    def title(self) -> str:
        return "Restore from backup"

    def lines(self) -> list[tuple[str, str]]:
        if self.skipped:
            return [("skip", f"skipped: {self.skipped}")]
        if self.dry_run:
            return [("info", f"DRY RUN: would restore {len(self.restored)} runs; nothing written")]
        found = [("ok", f"restored {len(self.restored)} runs")]
        if self.safety_backup is not None:
            found.append(
                (
                    "info",
                    f"the runs replaced were kept first as backup {self.safety_backup.id} (undo with it)",
                )
            )
        return found


@runbook_step(writes=True)
def restore_backup(
    session: Session, snapshot: UserSnapshot, choice: BackupChoice, *, dry_run: bool
) -> RestoreStep:
    """Return the restore of the chosen backup; the runs it replaces are backed up first."""
    if snapshot.user is None or choice.chosen is None:
        return RestoreStep(skipped=snapshot.problem or choice.problem)
    if not choice.intact:
        return RestoreStep(skipped=f"backup refused: {choice.problem}")
    backup = choice.chosen
    storage = session.storage
    if dry_run:
        try:
            projected = storage.restore_user_runs(snapshot.user.id, backup, dry_run=True)
        except BackupError as exc:
            return RestoreStep(skipped=f"the restore would be refused: {exc}")
        return RestoreStep(projected, dry_run=True)
    safety = storage.backup_user_runs(snapshot.user.id)
    try:
        restored = storage.restore_user_runs(snapshot.user.id, backup)
    except BackupError as exc:
        return RestoreStep(
            dry_run=False, safety_backup=safety, skipped=f"restore refused, nothing changed: {exc}"
        )
    return RestoreStep(restored, dry_run=False, done=True, safety_backup=safety)


@dataclass(frozen=True, repr=False)
class RestoreCheck(Shown):
    """Whether the restoration is complete, and what the invariants say of the restored runs."""

    complete: bool | None
    expected: int = 0
    found: int = 0
    violations: list[Violation] = field(default_factory=list)
    skipped: str = ""

    def title(self) -> str:
        return "Verify and validate the restoration"

    def lines(self) -> list[tuple[str, str]]:
        if self.complete is None:
            return [("skip", f"skipped: {self.skipped}")]
        found = [
            (
                "ok" if self.complete else "problem",
                f"backup restoration {'successful' if self.complete else 'incomplete'}: "
                f"{self.found} runs of {self.expected} in the backup",
            )
        ]
        if self.violations:
            found.append(
                (
                    "warn",
                    f"the restored runs break {len(self.violations)} invariants "
                    "(as they did when backed up): "
                    "rebuild the user (01_single_user_recovery) if the backup was not meant to be kept as is",
                )
            )
        else:
            found.append(("ok", "the restored runs satisfy every invariant"))
        return found


def validate_restoration(
    session: Session, snapshot: UserSnapshot, choice: BackupChoice, step: RestoreStep
) -> RestoreCheck:
    """Return whether every run of the backup is back, and the invariants of the restored runs."""
    if snapshot.user is None or choice.chosen is None or step.skipped:
        return RestoreCheck(None, skipped=step.skipped or snapshot.problem or choice.problem)
    expected = choice.chosen.metadata.total_runs
    checked = session.storage.validate_rebuild_results(snapshot.user.id, snapshot.runs, step.restored)
    return RestoreCheck(
        len(step.restored) == expected, expected, len(step.restored), checked.invariant_violations
    )


def restore_calendar(snapshot: UserSnapshot, step: RestoreStep, *, days: int) -> Chart:
    """Return the calendar with the runs before and after the restore."""
    if step.skipped:
        return user_calendar(snapshot, None, days=days)
    label = "runs restored (dry run)" if step.dry_run else "runs restored"
    return user_calendar(snapshot, step.restored, days=days, after_label=label)


def restore_verdict(
    params: RestoreParams,
    snapshot: UserSnapshot,
    choice: BackupChoice,
    step: RestoreStep,
    check: RestoreCheck,
) -> Verdict:
    """Return the one-line outcome of the restore and its figures."""
    figures: dict[str, object] = {**params.common.record(), "dry_run": params.dry_run}
    if snapshot.user is None:
        return Verdict(f"nothing done: {snapshot.problem}", "problem", figures)
    who = snapshot.user.email or snapshot.user.id
    figures.update(user_id=snapshot.user.id, backups_available=len(choice.backups))
    if choice.chosen is None:
        return Verdict(f"no backup available for {who}: {choice.problem}", "problem", figures)
    figures.update(
        backup_id=choice.chosen.id,
        backup_runs=choice.chosen.metadata.total_runs,
        backup_intact=choice.intact,
        runs_before=len(snapshot.runs),
    )
    if step.skipped or check.complete is None:
        return Verdict(f"backup {choice.chosen.id} of {who} not restored: {step.skipped}", "problem", figures)
    figures.update(
        runs_restored=check.found,
        violations_after=len(check.violations),
        safety_backup_id=step.safety_backup.id if step.safety_backup else None,
    )
    if step.dry_run:
        spans = [(r.start_date, r.end_date, r.day_count, r.active) for r in snapshot.runs]
        restored = [(r.start_date, r.end_date, r.day_count, r.active) for r in step.restored]
        detail = (
            f"{who}: backup {choice.chosen.id} is intact and would restore {check.found} runs, "
            f"{len(check.violations)} violations after"
        )
        changes = int(spans != restored)
        return dry_run_verdict(params.common, changes, detail, figures, trouble=bool(check.violations))
    if not check.complete:
        return Verdict(
            f"backup restoration incomplete for {who}: {check.found} of {check.expected} runs",
            "problem",
            figures,
        )
    status: Status = "ok" if not check.violations else "problem"
    tail = (
        "all invariants hold"
        if not check.violations
        else f"{len(check.violations)} violations remain: rebuild"
    )
    return Verdict(
        f"restored {check.found} runs of {who} from backup {choice.chosen.id}; {tail}", status, figures
    )
