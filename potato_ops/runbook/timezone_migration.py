"""04 timezone migration: find the users, update the zone, rebuild, verify the active runs.

Day marks never change; only which run is active may, because "today" is the user's local date.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date

import polars as pl

from potato_ops.charts.runs import timezone_chart
from potato_ops.domain.dates import local_today
from potato_ops.domain.models import RebuildResult, Run, User
from potato_ops.errors import UserNotFoundError
from potato_ops.runbook.check_token import runbook_step
from potato_ops.runbook.display import Chart, Shown, Verdict
from potato_ops.runbook.dry_run_verdict import dry_run_verdict
from potato_ops.runbook.params import TimezoneParams
from potato_ops.runbook.session import Session


@dataclass(frozen=True)
class Affected:
    """One user to migrate: their zone now and the zone their runs must follow."""

    user: User
    target_timezone: str


@dataclass(frozen=True, repr=False)
class AffectedUsers(Shown):
    """The users this migration works on."""

    users: list[Affected] = field(default_factory=list)
    mode: str = ""
    problem: str = ""

    def title(self) -> str:
        return "Identify affected users"

    def lines(self) -> list[tuple[str, str]]:
        if self.problem:
            return [("problem", self.problem)]
        if not self.users:
            return [("ok", f"{self.mode}: none")]
        return [("info", f"{self.mode}: {len(self.users)} users")]

    def frame(self, session: Session) -> pl.DataFrame:
        """Return user_id, email, timezone, target_timezone and both local todays."""
        now = session.storage.now()
        rows = [
            (
                a.user.id,
                a.user.email,
                a.user.timezone,
                a.target_timezone,
                local_today(a.user.timezone, now),
                local_today(a.target_timezone, now),
            )
            for a in self.users
        ]
        schema = {
            "user_id": pl.String,
            "email": pl.String,
            "timezone": pl.String,
            "target_timezone": pl.String,
            "local_today_now": pl.Date,
            "local_today_target": pl.Date,
        }
        return pl.DataFrame(rows, schema=schema, orient="row")


def find_affected_users(session: Session, params: TimezoneParams) -> AffectedUsers:
    """Return the user given (moved to new_timezone, if given), else every user with a pending change."""
    storage = session.storage
    if params.user.given:
        ref = params.user
        try:
            user = storage.get_user_by_email(ref.email) if ref.email else storage.get_user(ref.user_id)
        except UserNotFoundError as exc:
            return AffectedUsers(problem=f"{exc} in {session.database['url']}")
        target = params.new_timezone or user.timezone
        mode = f"move to {target}" if params.new_timezone else "rebuild in the current timezone"
        return AffectedUsers([Affected(user, target)], f"user {user.email or user.id}: {mode}")
    users: list[User] = []
    for uid in storage.get_users_with_timezone_changes(params.since):
        try:
            users.append(storage.get_user(uid))
        except UserNotFoundError:
            continue  # deleted since the change: nothing to migrate
    since = f" since {params.since.isoformat()}" if params.since else ""
    return AffectedUsers(
        [Affected(u, u.timezone) for u in users],
        f"users whose timezone changed{since} and were not rebuilt since",
    )


@dataclass(frozen=True, repr=False)
class TimezoneUpdate(Shown):
    """The timezone changes made (or, in a dry run, that would be made)."""

    changes: list[tuple[str, str, str]] = field(default_factory=list)  # user id, old, new
    dry_run: bool = True

    def title(self) -> str:
        return "Update user timezone"

    def lines(self) -> list[tuple[str, str]]:
        if not self.changes:
            return [("ok", "no timezone to change (the users' zones already changed)")]
        verb = "would change" if self.dry_run else "changed"
        prefix = "DRY RUN: " if self.dry_run else ""
        return [("info", f"{prefix}{verb} user {uid}: {old} -> {new}") for uid, old, new in self.changes]


@runbook_step(writes=True)
def update_timezones(session: Session, affected: AffectedUsers, *, dry_run: bool) -> TimezoneUpdate:
    """Return the zone changes; writes them (logged, day marks untouched) unless dry_run."""
    changes = [
        (a.user.id, a.user.timezone, a.target_timezone)
        for a in affected.users
        if a.user.timezone != a.target_timezone
    ]
    if not dry_run:
        for uid, _old, new in changes:
            session.storage.update_user(uid, timezone=new)
    return TimezoneUpdate(changes, dry_run)


@dataclass(frozen=True)
class UserMigration:
    """One user's rebuild in their new timezone context."""

    user_id: str
    timezone: str
    local_today: date
    active_before: Run | None
    active_after: Run | None
    result: RebuildResult


@dataclass(frozen=True, repr=False)
class TimezoneRebuilds(Shown):
    """The rebuilds with the active run before and after, per user."""

    migrations: list[UserMigration] = field(default_factory=list)
    dry_run: bool = True

    @property
    def failed(self) -> list[UserMigration]:
        """Return the users whose rebuild failed."""
        return [m for m in self.migrations if not m.result.success]

    @property
    def active_changed(self) -> list[UserMigration]:
        """Return the users whose active run changes."""
        return [m for m in self.migrations if _span(m.active_before) != _span(m.active_after)]

    def title(self) -> str:
        return "Rebuild with the new timezone context"

    def lines(self) -> list[tuple[str, str]]:
        if not self.migrations:
            return [("skip", "no users to rebuild")]
        prefix = "DRY RUN: " if self.dry_run else ""
        return [
            ("info", f"{prefix}{len(self.migrations)} users rebuilt"),
            ("ok" if not self.failed else "problem", f"failed: {len(self.failed)}"),
            ("info", f"active run changes for {len(self.active_changed)} users"),
        ]

    def frame(self) -> pl.DataFrame:
        """Return one row per user: zone, local today, active run before and after, outcome."""
        rows = [
            (
                m.user_id,
                m.timezone,
                m.local_today,
                _text(m.active_before),
                _text(m.active_after),
                m.result.success,
                round(m.result.duration_ms, 2),
            )
            for m in self.migrations
        ]
        schema = {
            "user_id": pl.String,
            "timezone": pl.String,
            "local_today": pl.Date,
            "active_before": pl.String,
            "active_after": pl.String,
            "success": pl.Boolean,
            "duration_ms": pl.Float64,
        }
        return pl.DataFrame(rows, schema=schema, orient="row")


def _span(run: Run | None) -> tuple[date, date] | None:
    return None if run is None else (run.start_date, run.end_date)


def _text(run: Run | None) -> str:
    return "none" if run is None else f"{run.start_date} .. {run.end_date} ({run.day_count} days)"


@runbook_step(writes=True)
def rebuild_affected(session: Session, affected: AffectedUsers, *, dry_run: bool) -> TimezoneRebuilds:
    """Return each user's rebuild (dry or real) with the active run by the rule in the target zone."""
    storage = session.storage
    now = storage.now()
    done: list[UserMigration] = []
    for a in affected.users:
        before = next((r for r in storage.get_user_runs(a.user.id) if r.active), None)
        # The engine moves the zone and rebuilds in one transaction (a dry run rolls both back),
        # so the active run it reports is the one the target zone gives.
        result = storage.rebuild_user_runs(a.user.id, dry_run=dry_run, timezone=a.target_timezone)
        today = local_today(a.target_timezone, now)
        after = next((r for r in result.runs_after if r.active), None)
        done.append(UserMigration(a.user.id, a.target_timezone, today, before, after, result))
    return TimezoneRebuilds(done, dry_run)


@dataclass(frozen=True, repr=False)
class ActiveRunCheck(Shown):
    """After a real migration: flags agree with the rule and no change is left pending."""

    checked: int = 0
    disagreeing: list[str] = field(default_factory=list)
    still_pending: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        """Return True when every flag agrees and nothing is pending."""
        return not self.skipped and not self.disagreeing and not self.still_pending

    def title(self) -> str:
        return "Verify the active runs"

    def lines(self) -> list[tuple[str, str]]:
        if self.skipped:
            return [("skip", f"skipped: {self.skipped}")]
        return [
            (
                "ok" if not self.disagreeing else "problem",
                f"active flags agree with local today for "
                f"{self.checked - len(self.disagreeing)} of {self.checked} users",
            ),
            (
                "ok" if not self.still_pending else "problem",
                f"still pending a rebuild: {len(self.still_pending)}",
            ),
        ]


def verify_active_runs(session: Session, rebuilds: TimezoneRebuilds) -> ActiveRunCheck:
    """Return whether each migrated user's stored active flag matches the rule now."""
    if rebuilds.dry_run:
        return ActiveRunCheck(skipped="dry run: nothing was written")
    if not rebuilds.migrations:
        return ActiveRunCheck(skipped="no users were migrated")
    storage = session.storage
    wrong: list[str] = []
    for m in rebuilds.migrations:
        flagged = next((r for r in storage.get_user_runs(m.user_id) if r.active), None)
        if _span(flagged) != _span(storage.get_active_run(m.user_id)):
            wrong.append(m.user_id)
    pending = set(storage.get_users_with_timezone_changes())
    left = sorted(m.user_id for m in rebuilds.migrations if m.user_id in pending)
    return ActiveRunCheck(len(rebuilds.migrations), wrong, left)


def timezones_chart(affected: AffectedUsers) -> Chart:
    """Return the chart of the timezones the affected users' runs follow."""
    zones = Counter(a.target_timezone for a in affected.users)
    return Chart("timezones", timezone_chart(dict(zones), title="Timezones of affected users"))


def timezone_verdict(
    params: TimezoneParams,
    affected: AffectedUsers,
    update: TimezoneUpdate,
    rebuilds: TimezoneRebuilds,
    check: ActiveRunCheck,
) -> Verdict:
    """Return the one-line outcome of the migration and its figures."""
    figures: dict[str, object] = {
        **params.common.record(),
        "dry_run": params.dry_run,
        "users_affected": len(affected.users),
        "timezones_changed": len(update.changes),
        "rebuilds_failed": len(rebuilds.failed),
        "active_runs_changed": len(rebuilds.active_changed),
    }
    ops = tuple(m.result.operation_id for m in rebuilds.migrations)
    if affected.problem:
        return Verdict(f"nothing done: {affected.problem}", "problem", figures)
    if not affected.users:
        return Verdict("no users with pending timezone changes: nothing to do", "ok", figures)
    n = len(affected.users)
    if params.dry_run:
        detail = (
            f"{len(update.changes)} timezone changes, active run changed for "
            f"{len(rebuilds.active_changed)}, {len(rebuilds.failed)} rebuilds failing"
        )
        return dry_run_verdict(params.common, n, detail, figures, ops, trouble=bool(rebuilds.failed))
    figures.update(flags_disagreeing=len(check.disagreeing), still_pending=len(check.still_pending))
    if rebuilds.failed or not check.ok:
        return Verdict(
            f"timezone migration of {n} users: {len(rebuilds.failed)} rebuilds failed, "
            f"{len(check.disagreeing)} active flags wrong, {len(check.still_pending)} still pending",
            "problem",
            figures,
            ops,
        )
    return Verdict(
        f"migrated {n} users ({len(update.changes)} timezone changes); "
        "active runs correct for their local today",
        "ok",
        figures,
        ops,
    )
