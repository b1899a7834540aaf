"""Plain records the package hands out (users, marks, runs, violations, results) and ``jsonable``.

Pure: no database import. Every record is a frozen dataclass; dates are ``datetime.date``.
``jsonable`` is the one conversion of these records (and of any figures) to JSON values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum, StrEnum
from pathlib import PurePath
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class User:
    """A Project Potato user."""

    id: str
    email: str | None
    timezone: str


@dataclass(frozen=True)
class DayMark:
    """One day a user marked (``value`` True) or un-marked (False)."""

    user_id: str
    date: date
    value: bool


@dataclass(frozen=True)
class Run:
    """A stored run: a streak of consecutive marked days."""

    id: int | None
    user_id: str
    start_date: date
    end_date: date
    day_count: int
    active: bool

    @property
    def span(self) -> tuple[date, date]:
        """Return ``(start_date, end_date)``."""
        return (self.start_date, self.end_date)


class ViolationKind(StrEnum):
    """The invariant kinds, in the contract's order (a str: compares equal to its value)."""

    MALFORMED = "malformed"
    OVERLAP = "overlap"
    ADJACENT = "adjacent"
    PHANTOM_DAY = "phantom_day"  # a date inside a run that is not marked (coverage)
    UNCOVERED_DAY = "uncovered_day"  # a marked date in no run (completeness)
    MULTIPLE_ACTIVE = "multiple_active"
    STALE_ACTIVE = "stale_active"
    ORPHAN = "orphan"


@dataclass(frozen=True)
class Violation:
    """One broken invariant: its kind, the user, and a human-readable detail."""

    kind: ViolationKind
    user_id: str
    detail: str
    count: int = 1  # days covered, for the day kinds (one record per contiguous stretch)


@dataclass(frozen=True)
class ValidationResult:
    """Whether a user's runs satisfy every invariant, and the violations if not."""

    valid: bool
    invariant_violations: list[Violation]


@dataclass(frozen=True)
class BackupMetadata:
    """What a backup says about itself."""

    total_runs: int
    checksum: str
    reason: str = "manual"
    operation_id: str | None = None


@dataclass(frozen=True)
class Backup:
    """A persisted copy of one user's runs."""

    id: int | None
    user_id: str
    timestamp: datetime
    runs: list[Run]
    metadata: BackupMetadata


@dataclass(frozen=True)
class RebuildResult:
    """The outcome of one user's rebuild (full or partial, real or dry run)."""

    success: bool
    operation_id: str
    runs_deleted: int
    runs_created: int
    total_days_processed: int
    duration_ms: float
    invariant_violations: list[Violation]
    backup: Backup | None
    user_id: str = ""
    dry_run: bool = False
    from_date: date | None = None
    to_date: date | None = None
    runs_unchanged: int = 0
    active_flags_changed: int = 0
    deleted_runs: list[Run] = field(default_factory=list)
    created_runs: list[Run] = field(default_factory=list)
    feature_flag_enabled: bool = False
    error: str | None = None
    # The user's runs as the validated rebuild left them, read in its own transaction: for a
    # dry run, the runs it would leave (read before the rollback). Empty when it failed.
    runs_after: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class InvariantReport:
    """Counts of each invariant kind over the scanned users, plus the violations."""

    overlapping_runs: int
    multiple_active_runs: int
    adjacent_runs: int
    uncovered_days: int
    phantom_days: int
    stale_active: int
    malformed_runs: int
    orphan_runs: int
    violations: list[Violation]
    users_scanned: int = 0
    users_with_violations: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Return the number of violations of every kind."""
        return len(self.violations)

    @property
    def ok(self) -> bool:
        """Return True when nothing is violated."""
        return not self.violations

    def users_with(self, kind: ViolationKind) -> list[str]:
        """Return the users with at least one violation of this kind, sorted."""
        return sorted({v.user_id for v in self.violations if v.kind == kind})

    def counts(self) -> dict[str, int]:
        """Return the count of each kind, keyed by the field name."""
        return {
            "overlapping_runs": self.overlapping_runs,
            "multiple_active_runs": self.multiple_active_runs,
            "adjacent_runs": self.adjacent_runs,
            "uncovered_days": self.uncovered_days,
            "phantom_days": self.phantom_days,
            "stale_active": self.stale_active,
            "malformed_runs": self.malformed_runs,
            "orphan_runs": self.orphan_runs,
        }


def jsonable(value: Any, where: str = "value") -> Any:
    """Return ``value`` as plain JSON data (dict, list, str, int, float, bool, None).

    The package's one converter, for records, CLI output and notebook results alike: dates
    and times become ISO strings, durations seconds, enums their values, dataclasses dicts,
    sets sorted lists, non-finite numbers None; numpy and polars scalars become Python values.
    Anything else raises TypeError naming ``where`` it was found.
    """
    if value is None or isinstance(value, bool | str | int):
        return value.value if isinstance(value, Enum) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Enum):
        return jsonable(value.value, where)
    if isinstance(value, UUID | PurePath):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value), where)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    # numpy and polars scalars and arrays know how to become Python values.
    for method in ("item", "tolist", "to_list"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                converted = convert()
            except (TypeError, ValueError):
                continue
            if converted is not value:
                return jsonable(converted, where)
    raise TypeError(f"{where} is a {type(value).__name__}, which cannot be recorded as JSON")
