"""Database-wide views shared by several notebooks: the invariant scan, timezones, run lengths."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from potato_ops.charts.monitoring import violations_by_kind_chart
from potato_ops.charts.runs import run_length_chart, timezone_chart
from potato_ops.domain.models import InvariantReport
from potato_ops.monitoring.metrics import violations_by_kind
from potato_ops.runbook.display import Chart, Shown, count_lines, violations_frame
from potato_ops.runbook.session import Session

UNKNOWN_ZONE = "(user missing)"


@dataclass(frozen=True, repr=False)
class InvariantCheck(Shown):
    """An invariant scan's report, shown as counts per kind."""

    report: InvariantReport
    label: str = "Invariant scan"

    @property
    def by_kind(self) -> dict[str, int]:
        """Return violation records per kind, every kind listed."""
        return violations_by_kind(self.report)

    def title(self) -> str:
        return f"{self.label}: {self.report.users_scanned} users scanned"

    def lines(self) -> list[tuple[str, str]]:
        r = self.report
        head = (
            ("ok", "✔ all invariants hold")
            if r.ok
            else ("problem", f"{r.total} violations in {len(r.users_with_violations)} users")
        )
        return [head, *count_lines(r.counts())]

    def violations_frame(self, limit: int = 200) -> pl.DataFrame:
        """Return the first violations as a frame."""
        return violations_frame(self.report.violations, limit)

    def chart(self) -> Chart:
        """Return the violations per kind as a chart."""
        return Chart("violations by kind", violations_by_kind_chart(self.by_kind))


def scan_invariants(
    session: Session, user_ids: Sequence[str] | None = None, label: str = "Invariant scan"
) -> InvariantCheck:
    """Return the invariant scan of the given users (every user by default)."""
    return InvariantCheck(session.storage.validate_invariants(user_ids), label)


def zones_of(session: Session, user_ids: Sequence[str]) -> dict[str, int]:
    """Return how many of the users live in each timezone (missing users counted apart)."""
    wanted = set(user_ids)
    found = session.storage.get_timezones(sorted(wanted))
    zones = Counter(found.values())
    missing = len(wanted) - len(found)
    if missing:
        zones[UNKNOWN_ZONE] += missing
    return dict(zones)


def timezones_chart(
    session: Session, user_ids: Sequence[str], title: str = "Timezones of affected users"
) -> Chart:
    """Return the chart of the users' timezones."""
    return Chart("timezones", timezone_chart(zones_of(session, user_ids), title=title))


def run_lengths(session: Session, user_ids: Sequence[str] | None = None) -> dict[int, int]:
    """Return how many stored runs have each day_count (every user, or the given ones)."""
    return session.storage.get_run_length_counts(user_ids)


def run_lengths_chart(
    session: Session, user_ids: Sequence[str] | None = None, title: str = "Run length distribution"
) -> Chart:
    """Return the distribution of stored run lengths."""
    return Chart("run lengths", run_length_chart(run_lengths(session, user_ids), title=title))
