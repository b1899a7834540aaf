"""05 error recovery: the playbook's three scenarios, detected once, dry-run, repaired, verified.

1. invariant violations: users with overlapping runs or several active runs are rebuilt;
2. performance degradation: users with slow rebuilds get a partial rebuild of recent days;
3. data corruption: every other user whose runs break an invariant is backed up, rebuilt,
   validated, and restored from the backup when that fails. Runs of users that do not exist
   (orphans) cannot be rebuilt: they are backed up and removed.

Every repair goes through ``Storage.repair_users``: a user's backup, rebuild,
validation and, on failure, restore are one transaction that commits or rolls back whole.

Detection is one whole-database scan: the per-kind user lists (``get_users_with_overlapping_runs``
and the like) are read from its report, as Storage itself derives them, so a large database is
scanned once, not once per list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from potato_ops import RepairStatus, UserRepair
from potato_ops.charts.monitoring import slowest_users_chart
from potato_ops.charts.runs import violations_before_after
from potato_ops.domain.models import ViolationKind
from potato_ops.monitoring.metrics import history_frame, slowest_users_frame
from potato_ops.runbook.check_token import runbook_step
from potato_ops.runbook.database_views import InvariantCheck, scan_invariants, timezones_chart
from potato_ops.runbook.display import Chart, Shown, Verdict, user_emails
from potato_ops.runbook.dry_run_verdict import dry_run_verdict
from potato_ops.runbook.params import RecoveryParams
from potato_ops.runbook.session import Session

INVARIANTS, PERFORMANCE, CORRUPTION = "invariant_violations", "performance_degradation", "data_corruption"
ALL_HISTORY = "36500d"
REPAIR_SCHEMA = {
    "scenario": pl.String,
    "user_id": pl.String,
    "action": pl.String,
    "outcome": pl.String,
    "runs_deleted": pl.Int64,
    "runs_created": pl.Int64,
    "duration_ms": pl.Float64,
    "backup_id": pl.Int64,
}


@dataclass(frozen=True, repr=False)
class Detection(Shown):
    """What each chosen scenario found, from one scan and the rebuild history."""

    scenarios: tuple[str, ...]
    check: InvariantCheck
    overlapping: list[str] = field(default_factory=list)
    multiple_active: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)  # existing users with any violation
    orphan_owners: list[str] = field(default_factory=list)  # ids of missing users owning runs
    slow: list[str] = field(default_factory=list)
    slow_threshold_ms: float = 1000.0

    @property
    def users_to_rebuild(self) -> list[str]:
        """Return the users of scenario 1 (overlap, several active runs)."""
        if INVARIANTS not in self.scenarios:
            return []
        return sorted(set(self.overlapping) | set(self.multiple_active))

    @property
    def users_to_repair(self) -> list[str]:
        """Return the users of scenario 3 not already rebuilt by scenario 1."""
        if CORRUPTION not in self.scenarios:
            return []
        return sorted(set(self.corrupted) - set(self.users_to_rebuild))

    @property
    def nothing_found(self) -> bool:
        """Return True when no chosen scenario has anything to do."""
        return not (self.users_to_rebuild or self.users_to_repair or self.orphan_owners or self.slow)

    def title(self) -> str:
        return "Detect: " + ", ".join(s.replace("_", " ") for s in self.scenarios)

    def lines(self) -> list[tuple[str, str]]:
        report = self.check.report
        found = [
            (
                "ok" if report.ok else "problem",
                f"{report.total} violations in {len(report.users_with_violations)} "
                f"of {report.users_scanned} users",
            )
        ]
        if INVARIANTS in self.scenarios:
            found.append(_count_line(f"{report.overlapping_runs} overlapping runs, users", self.overlapping))
            found.append(_count_line("users with multiple active runs", self.multiple_active))
        if PERFORMANCE in self.scenarios:
            found.append(
                _count_line(f"users with a rebuild slower than {self.slow_threshold_ms:.0f} ms", self.slow)
            )
        if CORRUPTION in self.scenarios:
            found.append(_count_line("users whose runs differ from their marks", self.corrupted))
            found.append(_count_line("missing users owning orphan runs", self.orphan_owners))
        return found


def _count_line(what: str, ids: list[str]) -> tuple[str, str]:
    return ("ok" if not ids else "problem", f"{what}: {len(ids)}")


def detect(session: Session, params: RecoveryParams) -> Detection:
    """Return what the chosen scenarios must handle (one invariant scan, one history query)."""
    check = scan_invariants(session, label="Detect")
    report = check.report
    orphans = report.users_with(ViolationKind.ORPHAN)
    slow = (
        session.storage.get_users_with_slow_rebuild_history(params.slow_threshold_ms)
        if PERFORMANCE in params.scenarios
        else []
    )
    return Detection(
        params.scenarios,
        check,
        report.users_with(ViolationKind.OVERLAP),
        report.users_with(ViolationKind.MULTIPLE_ACTIVE),
        sorted(set(report.users_with_violations) - set(orphans)),
        orphans if CORRUPTION in params.scenarios else [],
        slow,
        params.slow_threshold_ms,
    )


@dataclass(frozen=True)
class RepairRow:
    """What happened (or would happen) to one user."""

    scenario: str
    user_id: str
    action: str
    outcome: str
    runs_deleted: int = 0
    runs_created: int = 0
    duration_ms: float = 0.0
    backup_id: int | None = None


@dataclass(frozen=True, repr=False)
class Repairs(Shown):
    """The repairs of one pass (a dry run, or the real thing)."""

    label: str
    rows: list[RepairRow] = field(default_factory=list)
    dry_run: bool = True
    skipped: str = ""

    def outcomes(self) -> dict[str, int]:
        """Return how many users ended with each outcome."""
        counted: dict[str, int] = {}
        for r in self.rows:
            counted[r.outcome] = counted.get(r.outcome, 0) + 1
        return counted

    def title(self) -> str:
        return self.label

    def lines(self) -> list[tuple[str, str]]:
        if self.skipped:
            return [("skip", f"skipped: {self.skipped}")]
        if not self.rows:
            return [("ok", "nothing to repair")]
        good = ("repaired", "would repair", "removed", "would remove", "unchanged", "fast enough")
        return [(("ok" if k in good else "problem"), f"{k}: {n}") for k, n in sorted(self.outcomes().items())]

    def frame(self) -> pl.DataFrame:
        """Return one row per user and action."""
        rows = [
            (
                r.scenario,
                r.user_id,
                r.action,
                r.outcome,
                r.runs_deleted,
                r.runs_created,
                round(r.duration_ms, 3),
                r.backup_id,
            )
            for r in self.rows
        ]
        return pl.DataFrame(rows, schema=REPAIR_SCHEMA, orient="row")


_ACTIONS = {INVARIANTS: "rebuild", CORRUPTION: "backup, rebuild, validate"}


def _outcome(scenario: str, done: UserRepair, params: RecoveryParams, *, dry_run: bool) -> str:
    if done.status is RepairStatus.NO_USER:
        return f"failed: {done.error}"
    if done.status is RepairStatus.ROLLED_BACK:
        # The backup, the rebuild and its validation were one transaction: its rollback is the
        # playbook's restore, so the runs are exactly as they were backed up.
        return (
            "could not repair, rolled back to the runs as backed up"
            if scenario == CORRUPTION
            else ("failed, rolled back")
        )
    if scenario == PERFORMANCE:
        assert done.result is not None
        return "still slow" if done.result.duration_ms > params.still_slow_ms else "fast enough"
    if done.status is RepairStatus.UNCHANGED:
        return "unchanged"
    return "would repair" if dry_run else "repaired"


def _repair_rows(
    session: Session, scenario: str, uids: list[str], params: RecoveryParams, *, dry_run: bool
) -> list[RepairRow]:
    """Repair each user through the engine (one transaction each) and describe what happened."""
    recent = params.recent_days if scenario == PERFORMANCE else None
    action = _ACTIONS.get(scenario, f"partial rebuild of the last {params.recent_days} days")
    rows: list[RepairRow] = []
    for done in session.storage.repair_users(uids, dry_run=dry_run, recent_days=recent):
        r = done.result
        kept = r.backup.id if r is not None and r.backup is not None else None
        rows.append(
            RepairRow(
                scenario,
                done.user_id,
                action,
                _outcome(scenario, done, params, dry_run=dry_run),
                r.runs_deleted if r else 0,
                r.runs_created if r else 0,
                r.duration_ms if r else 0.0,
                kept,
            )
        )
    return rows


def remove_orphan_runs(session: Session, owner_ids: list[str], *, dry_run: bool) -> list[RepairRow]:
    """Back up and delete the runs of ids that are not users (re-checked under the lock)."""
    taken = session.storage.remove_orphan_runs(owner_ids, dry_run=dry_run)
    outcome = "would remove" if dry_run else "removed"
    return [
        RepairRow(CORRUPTION, uid, "remove orphan runs", outcome, b.metadata.total_runs, 0, 0.0, b.id)
        for uid, b in sorted(taken.items())
    ]


def _repairs(
    session: Session, detection: Detection, params: RecoveryParams, *, dry_run: bool
) -> list[RepairRow]:
    rows = _repair_rows(session, INVARIANTS, detection.users_to_rebuild, params, dry_run=dry_run)
    if PERFORMANCE in detection.scenarios:
        rows += _repair_rows(session, PERFORMANCE, detection.slow, params, dry_run=dry_run)
    rows += _repair_rows(session, CORRUPTION, detection.users_to_repair, params, dry_run=dry_run)
    rows += remove_orphan_runs(session, detection.orphan_owners, dry_run=dry_run)
    return rows


def dry_run_repairs(session: Session, detection: Detection, params: RecoveryParams) -> Repairs:
    """Return what the repair would do to each user (every rebuild rolled back)."""
    return Repairs("Dry run of the repair", _repairs(session, detection, params, dry_run=True))


@runbook_step(writes=True)
def repair(session: Session, detection: Detection, params: RecoveryParams) -> Repairs:
    """Return the real repair, scenario by scenario; skipped when dry_run is True."""
    label = "Repair"
    if params.dry_run:
        return Repairs(label, skipped="dry_run=True: the dry run above is all this run does")
    return Repairs(label, _repairs(session, detection, params, dry_run=False), dry_run=False)


def verify(session: Session, detection: Detection, done: Repairs) -> InvariantCheck:
    """Return the invariant scan after the repair (the detection's, when nothing was written)."""
    if done.dry_run:
        return InvariantCheck(detection.check.report, "Verify (dry run, nothing written: as detected)")
    return scan_invariants(session, label="Verify after the repair")


def violations_chart(detection: Detection, after: InvariantCheck) -> Chart:
    """Return violations per kind before and after the repair."""
    figure = violations_before_after(detection.check.by_kind, after.by_kind)
    return Chart("violations before and after", figure)


def affected_timezones_chart(session: Session, detection: Detection) -> Chart:
    """Return the timezones of the users the scenarios found."""
    users = sorted(set(detection.check.report.users_with_violations) | set(detection.slow))
    return timezones_chart(session, users)


def slow_users_chart(session: Session, *, top: int = 10) -> Chart:
    """Return the users with the slowest recorded rebuilds."""
    frame = slowest_users_frame(history_frame(session.storage.database, ALL_HISTORY), top)
    emails = user_emails(session.storage, frame["user_id"].to_list())
    return Chart("slowest users", slowest_users_chart(frame, emails=emails))


def recovery_verdict(
    params: RecoveryParams, detection: Detection, dry: Repairs, done: Repairs, after: InvariantCheck
) -> Verdict:
    """Return the one-line outcome of the recovery and its figures."""
    before = detection.check.report
    outcomes = done.outcomes() if not done.skipped else dry.outcomes()
    figures: dict[str, object] = {
        **params.common.record(),
        "dry_run": params.dry_run,
        "scenarios": list(params.scenarios),
        "violations_before": before.total,
        "users_with_violations_before": len(before.users_with_violations),
        "violations_after": after.report.total,
        "users_with_violations_after": len(after.report.users_with_violations),
        "violations_by_kind_before": detection.check.by_kind,
        "slow_users": len(detection.slow),
        "outcomes": outcomes,
    }
    if detection.nothing_found:
        return Verdict("no violations and no slow users found: nothing to repair", "ok", figures)
    users = len({r.user_id for r in dry.rows})
    if params.dry_run:
        detail = (
            f"{before.total} violations in {len(before.users_with_violations)} users, "
            f"{len(detection.slow)} slow users"
        )
        return dry_run_verdict(params.common, users, detail, figures, trouble=not before.ok)
    bad = [r for r in done.rows if r.outcome.startswith(("failed", "could not", "still slow"))]
    repaired = sum(1 for r in done.rows if r.outcome in ("repaired", "removed"))
    text = f"repaired {repaired} users; {after.report.total} violations remain" + (
        f"; {len(bad)} users not repaired or still slow" if bad else ""
    )
    return Verdict(text, "ok" if after.report.ok and not bad else "problem", figures)
