"""03 bulk recovery: plan, dry run, the real rebuild, progress, errors, validation, charts."""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from potato_ops import BulkConfig, BulkResult, Progress
from potato_ops.charts.monitoring import duration_histogram, slowest_users_chart
from potato_ops.errors import FeatureFlagError, PotatoOpsError
from potato_ops.monitoring.metrics import HISTORY_SCHEMA, history_frame, slowest_users_frame
from potato_ops.runbook.check_token import runbook_step
from potato_ops.runbook.database_views import InvariantCheck, scan_invariants
from potato_ops.runbook.display import Chart, Shown, Verdict, user_emails
from potato_ops.runbook.dry_run_verdict import dry_run_verdict
from potato_ops.runbook.params import BulkParams
from potato_ops.runbook.progress import ProgressBar
from potato_ops.runbook.session import Session

USERS_PER_HOUR_TARGET = 1000  # playbook: full rebuild
PARTIAL_USERS_PER_HOUR_TARGET = 5000
FAILURE_RATE_TARGET = 0.001


@dataclass(frozen=True, repr=False)
class BulkPlan(Shown):
    """The users a bulk rebuild will process and how."""

    user_ids: list[str]
    missing: list[str]
    config: BulkConfig
    everyone: bool
    operation_id: str = ""  # pause this operation, or continue it instead of starting one
    pause: bool = False

    def title(self) -> str:
        return "Preparation: the users and the configuration"

    def lines(self) -> list[tuple[str, str]]:
        who = "every user" if self.everyone else "the users given"
        found = [("info", f"planning bulk rebuild for {len(self.user_ids)} users ({who})")]
        if self.missing:
            found.append(
                (
                    "warn",
                    f"{len(self.missing)} ids given are not users and are left out: "
                    + ", ".join(self.missing[:10]),
                )
            )
        if not self.user_ids:
            found.append(("warn", "no users to rebuild"))
        if self.operation_id:
            act = "pause" if self.pause else "continue (a paused or interrupted operation)"
            found.append(("info", f"this run will {act} operation {self.operation_id}, not start one"))
        c = self.config
        found.append(
            (
                "info",
                f"batch_size {c.batch_size}, max_workers {c.max_workers}, dry_run {c.dry_run}, "
                f"range {c.from_date or '…'} .. {c.to_date or '…'}, skip_backup {c.skip_backup}, "
                f"max_failure_rate {c.max_failure_rate}, ignore_feature_flag {c.ignore_feature_flag}",
            )
        )
        return found

    def config_frame(self) -> pl.DataFrame:
        """Return the configuration as setting / value rows."""
        settings = self.config.to_json()
        return pl.DataFrame({"setting": list(settings), "value": [str(v) for v in settings.values()]})


def plan_bulk(session: Session, params: BulkParams) -> BulkPlan:
    """Return the plan: the users (every user when none are given) and the BulkConfig."""
    known = [u.id for u in session.storage.get_all_users()]
    if params.user_ids:
        present = set(known)
        chosen = [u for u in params.user_ids if u in present]
        missing = [u for u in params.user_ids if u not in present]
    else:
        chosen, missing = known, []
    return BulkPlan(chosen, missing, params.config, not params.user_ids, params.operation_id, params.pause)


@dataclass(frozen=True, repr=False)
class BulkStep(Shown):
    """One bulk run (dry or real): its result, or why it did not run."""

    label: str
    result: BulkResult | None = None
    skipped: str = ""
    refused: str = ""
    partial: bool = False
    paused: Progress | None = None  # the operation this run paused

    @property
    def failure_rate(self) -> float:
        """Return failed users over users processed (0 with none)."""
        r = self.result
        done = r.completed_users + r.failed_users if r else 0
        return r.failed_users / done if r and done else 0.0

    def title(self) -> str:
        return self.label

    def lines(self) -> list[tuple[str, str]]:
        if self.refused:
            return [("problem", f"refused: {self.refused}")]
        if self.paused is not None:
            p = self.paused
            return [
                ("warn" if p.status == "paused" else "info", f"operation {p.operation_id}: {p.status}"),
                (
                    "info",
                    f"progress: {p.processed_users}/{p.total_users}; its workers stop at their next batch",
                ),
                (
                    "info",
                    f"continue it with operation_id={p.operation_id} (or potato-ops resume {p.operation_id})",
                ),
            ]
        r = self.result
        if r is None:
            return [("skip", f"skipped: {self.skipped}")]
        if r.dry_run:
            return [
                ("info", f"[DRY RUN] would process {r.total_users} users (operation {r.operation_id})"),
                ("info", f"{r.users_changed} users would change; {r.failed_users} failed"),
            ]
        target = PARTIAL_USERS_PER_HOUR_TARGET if self.partial else USERS_PER_HOUR_TARGET
        rate = r.completed_users / (r.total_duration_ms / 3_600_000) if r.total_duration_ms else float("inf")
        return [
            (
                "ok" if r.status == "completed" else "problem",
                f"status {r.status} (operation {r.operation_id})",
            ),
            ("info", f"completed: {r.completed_users}"),
            ("ok" if not r.failed_users else "problem", f"failed: {r.failed_users}"),
            (
                "info",
                f"caught up: {r.caught_up_users} users rebuilt again (the app changed their marks "
                f"after their batch); {r.late_users} changed after the final pass (the app's own)",
            ),
            (
                "info",
                f"duration: {r.total_duration_ms:.0f} ms; average {r.average_duration_ms:.1f} ms per user",
            ),
            (
                "ok" if rate >= target else "warn",
                f"throughput {rate:,.0f} users/hour (target {target:,}/hour)",
            ),
            (
                "ok" if self.failure_rate <= FAILURE_RATE_TARGET else "warn",
                f"failure rate {self.failure_rate:.3%} (target < {FAILURE_RATE_TARGET:.1%})",
            ),
        ]

    def errors_frame(self) -> pl.DataFrame:
        """Return the per-user errors: user_id, error_class, message."""
        errors = self.result.errors if self.result else []
        return pl.DataFrame(
            {
                "user_id": [e.user_id for e in errors],
                "error_class": [e.error_class for e in errors],
                "message": [e.message for e in errors],
            },
            schema={"user_id": pl.String, "error_class": pl.String, "message": pl.String},
        )

    def changes_frame(self) -> pl.DataFrame:
        """Return what the run did (or would do) to each changed user."""
        changes = self.result.changes if self.result else []
        return pl.DataFrame(
            {
                "user_id": [c.user_id for c in changes],
                "runs_to_delete": [c.runs_to_delete for c in changes],
                "runs_to_create": [c.runs_to_create for c in changes],
                "active_flags_changed": [c.active_flags_changed for c in changes],
            },
            schema={
                "user_id": pl.String,
                "runs_to_delete": pl.Int64,
                "runs_to_create": pl.Int64,
                "active_flags_changed": pl.Int64,
            },
        )


def bulk_dry_run(session: Session, plan: BulkPlan) -> BulkStep:
    """Return the dry run over the plan's users (always done first; nothing is written)."""
    label = "Execute the dry run"
    if plan.operation_id:
        return BulkStep(label, skipped=f"this run pauses or continues operation {plan.operation_id}")
    if not plan.user_ids:
        return BulkStep(label, skipped="no users to rebuild")
    with ProgressBar(desc="dry run") as bar:
        result = session.storage.bulk_rebuild_users(
            plan.user_ids, replace(plan.config, dry_run=True), progress=bar
        )
    return BulkStep(label, result)


@runbook_step(writes=True)
def bulk_execute(session: Session, plan: BulkPlan) -> BulkStep:
    """Return the real rebuild, unless the plan is a dry run or the feature flag refuses it."""
    label = "Execute the actual rebuild"
    if plan.operation_id:
        return _pause_or_resume(session, plan)
    if plan.config.dry_run:
        return BulkStep(label, skipped="dry_run=True: the dry run above is all this run does")
    if not plan.user_ids:
        return BulkStep(label, skipped="no users to rebuild")
    partial = plan.config.from_date is not None or plan.config.to_date is not None
    try:
        with ProgressBar() as bar:
            result = session.storage.bulk_rebuild_users(plan.user_ids, plan.config, progress=bar)
    except FeatureFlagError as exc:
        return BulkStep(label, refused=str(exc), partial=partial)
    return BulkStep(label, result, partial=partial)


def _pause_or_resume(session: Session, plan: BulkPlan) -> BulkStep:
    """Pause the plan's operation, or continue it with the settings its ledger holds."""
    try:
        if plan.pause:
            return BulkStep(
                "Pause the operation", paused=session.storage.pause_bulk_rebuild(plan.operation_id)
            )
        with ProgressBar(desc="resuming") as bar:
            result = session.storage.resume_bulk_rebuild(plan.operation_id, progress=bar)
    except PotatoOpsError as exc:  # unknown operation, a live runner, the flag turned off
        return BulkStep("Continue the operation", refused=str(exc))
    return BulkStep("Continue the operation", result)


@dataclass(frozen=True, repr=False)
class ProgressView(Shown):
    """The ledger's view of an operation."""

    progress: Progress | None
    skipped: str = ""

    def title(self) -> str:
        return "Progress monitoring"

    def lines(self) -> list[tuple[str, str]]:
        p = self.progress
        if p is None:
            return [("skip", f"skipped: {self.skipped}")]
        eta = f", eta {p.eta_seconds:.0f} s" if p.eta_seconds else ""
        shown = [
            ("ok" if p.status == "completed" else "warn", f"status: {p.status} (operation {p.operation_id})"),
            ("info", f"progress: {p.processed_users}/{p.total_users}{eta}"),
            ("info", f"completed {p.completed_users}, failed {p.failed_users}"),
        ]
        if p.waiting:  # throttled, outside its window, or paused: why it does not move
            shown.append(("warn", p.waiting))
        if p.throttled_seconds:
            shown.append(("info", f"waited {p.throttled_seconds:.0f} s in all (throttle, window, pause)"))
        return shown


def bulk_progress(session: Session, *steps: BulkStep) -> ProgressView:
    """Return the ledger's progress of the last of the steps that ran (or paused an operation)."""
    ran = [s.result.operation_id for s in steps if s.result is not None]
    ran += [s.paused.operation_id for s in steps if s.paused is not None]
    if not ran:
        return ProgressView(None, "no operation ran")
    return ProgressView(session.storage.get_rebuild_progress(ran[-1]))


def validate_bulk(session: Session, plan: BulkPlan) -> InvariantCheck:
    """Return the invariant scan of the plan's users after the rebuild."""
    return scan_invariants(session, None if plan.everyone else plan.user_ids, "Validate after the rebuild")


def _operation_history(session: Session, step: BulkStep) -> pl.DataFrame:
    if step.result is None:
        return pl.DataFrame(schema=HISTORY_SCHEMA)
    return history_frame(session.storage.database, operation_id=step.result.operation_id)


def duration_chart(session: Session, step: BulkStep, *, slow_threshold_ms: float = 1000) -> Chart:
    """Return the histogram of the operation's rebuild durations (empty for a dry run)."""
    history = _operation_history(session, step)
    return Chart("rebuild durations", duration_histogram(history, slow_threshold_ms=slow_threshold_ms))


def slowest_chart(session: Session, step: BulkStep, *, top: int = 10) -> Chart:
    """Return the operation's slowest users."""
    frame = slowest_users_frame(_operation_history(session, step), top)
    emails = user_emails(session.storage, frame["user_id"].to_list())
    return Chart("slowest users", slowest_users_chart(frame, emails=emails))


def bulk_verdict(
    params: BulkParams, plan: BulkPlan, dry: BulkStep, real: BulkStep, check: InvariantCheck
) -> Verdict:
    """Return the one-line outcome of the bulk recovery and its figures."""
    report = check.report
    figures: dict[str, object] = {
        **params.common.record(),
        "dry_run": params.dry_run,
        "users_planned": len(plan.user_ids),
        "ids_not_found": len(plan.missing),
        "violations_after": report.total,
        "users_with_violations_after": len(report.users_with_violations),
    }
    ops = tuple(s.result.operation_id for s in (dry, real) if s.result is not None)
    if dry.result is not None:
        figures.update(dry_run_users_changed=dry.result.users_changed, dry_run_failed=dry.result.failed_users)
    if not plan.user_ids:
        return Verdict("nothing to do: no users to rebuild", "ok" if report.ok else "problem", figures, ops)
    if real.refused:
        return Verdict(f"bulk rebuild refused: {real.refused}", "problem", figures, ops)
    if real.paused is not None:
        p = real.paused
        figures.update(status=p.status, processed_users=p.processed_users, total_users=p.total_users)
        return Verdict(
            f"operation {p.operation_id} {p.status} at {p.processed_users}/{p.total_users} users; "
            f"continue it with operation_id={p.operation_id}",
            "ok" if p.status in ("paused", "completed") else "problem",
            figures,
            (p.operation_id,),
        )
    r = real.result
    if r is None:
        changed = dry.result.users_changed if dry.result else 0
        detail = f"of {len(plan.user_ids)} users planned; {report.total} violations now"
        return dry_run_verdict(params.common, changed, detail, figures, ops, trouble=not report.ok)
    figures.update(
        completed_users=r.completed_users,
        failed_users=r.failed_users,
        total_duration_ms=round(r.total_duration_ms, 1),
        average_duration_ms=round(r.average_duration_ms, 3),
        status=r.status,
        caught_up_users=r.caught_up_users,
        changed_after_final_pass=r.late_users,
    )
    if r.status == "running":  # a paused operation whose workers were waiting: they go on
        return Verdict(
            f"operation {r.operation_id} resumed: its workers go on ({r.completed_users} completed so far)",
            "ok",
            figures,
            ops,
        )
    good = r.status == "completed" and r.failed_users == 0 and report.ok
    following = ""
    if not report.ok:
        following = "; next: run 05_error_recovery (it repairs what a rebuild cannot, such as orphan runs)"
    elif r.failed_users:
        following = "; next: run 08_troubleshooting for the failed users"
    return Verdict(
        f"bulk rebuild {r.status}: {r.completed_users} completed, {r.failed_users} failed, "
        f"{r.caught_up_users} caught up in {r.total_duration_ms / 1000:.1f} s; "
        f"{report.total} violations remain{following}",
        "ok" if good else "problem",
        figures,
        ops,
    )
