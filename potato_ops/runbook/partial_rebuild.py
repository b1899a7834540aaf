"""02 partial rebuild: the check that the runs outside the range were left alone.

The other steps (identify, rebuild, validate, roll back, the verdict) are 01's, in
``runbook.single_user_recovery``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from potato_ops.domain.dates import ONE_DAY
from potato_ops.domain.models import Run
from potato_ops.runbook.display import Shown
from potato_ops.runbook.single_user_recovery import RebuildStep, UserSnapshot


@dataclass(frozen=True, repr=False)
class RangeIsolation(Shown):
    """Whether a partial rebuild left every run entirely outside its range unchanged."""

    window: tuple[date | None, date | None]
    outside: int = 0
    changed: list[Run] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        """Return True when no run outside the range changed."""
        return not self.skipped and not self.changed

    def title(self) -> str:
        return "Verify range isolation"

    def lines(self) -> list[tuple[str, str]]:
        if self.skipped:
            return [("skip", f"skipped: {self.skipped}")]
        found = [
            (
                "ok" if not self.changed else "problem",
                f"preserved {self.outside - len(self.changed)} of {self.outside} runs outside the range",
            )
        ]
        found.extend(
            ("problem", f"changed outside the range: run #{r.id} [{r.start_date}..{r.end_date}]")
            for r in self.changed
        )
        return found


def verify_range_isolation(snapshot: UserSnapshot, step: RebuildStep) -> RangeIsolation:
    """Return which runs entirely outside ``[from - 1, to + 1]`` the rebuild changed (none, if right)."""
    r = step.result
    if snapshot.user is None or r is None:
        return RangeIsolation((None, None), skipped=snapshot.problem or step.skipped)
    window = (r.from_date, r.to_date)
    if r.from_date is None and r.to_date is None:
        return RangeIsolation(window, skipped="no range given: this was a full rebuild")
    lo = r.from_date - ONE_DAY if r.from_date else date.min
    hi = r.to_date + ONE_DAY if r.to_date else date.max
    outside = [x for x in step.before if x.end_date < lo or x.start_date > hi]
    after = {(x.id, x.start_date, x.end_date, x.day_count) for x in step.after}
    changed = [x for x in outside if (x.id, x.start_date, x.end_date, x.day_count) not in after]
    return RangeIsolation(window, len(outside), changed)
