"""How a bulk rebuild runs: ``BulkConfig``, checked when made, stored in the ledger as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from potato_ops.domain.dates import parse_date_range
from potato_ops.errors import ConfigError

MAX_WORKERS = 16  # the pool holds 20 connections; one is the runner lock's


@dataclass(frozen=True)
class BulkConfig:
    """How a bulk rebuild runs (the playbook's options plus the safety ones).

    Checked when made: ConfigError for batch_size or max_workers below 1 (or max_workers
    above 16) or max_failure_rate outside [0, 1]; InvalidDateRangeError for dates.
    """

    batch_size: int = 10
    max_workers: int = 5
    dry_run: bool = True
    from_date: date | str | None = None
    to_date: date | str | None = None
    skip_backup: bool = False
    max_failure_rate: float = 0.01
    ignore_feature_flag: bool = False

    def __post_init__(self) -> None:
        # bool is an int in Python; True as a batch size is a mistake, not 1.
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number of at least 1, not {self.batch_size!r}")
        workers = self.max_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"max_workers must be between 1 and {MAX_WORKERS}, not {workers!r}")
        rate = self.max_failure_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ConfigError(f"max_failure_rate must be between 0 and 1, not {rate!r}")
        self.date_range()

    def date_range(self) -> tuple[date | None, date | None]:
        """Return (from_date, to_date) parsed; raises InvalidDateRangeError."""
        return parse_date_range(self.from_date, self.to_date)

    def to_json(self) -> dict[str, Any]:
        """Return the config as JSON-ready values (dates as ISO strings), for the ledger."""
        lo, hi = self.date_range()
        return {
            "batch_size": self.batch_size,
            "max_workers": self.max_workers,
            "dry_run": self.dry_run,
            "from_date": None if lo is None else lo.isoformat(),
            "to_date": None if hi is None else hi.isoformat(),
            "skip_backup": self.skip_backup,
            "max_failure_rate": self.max_failure_rate,
            "ignore_feature_flag": self.ignore_feature_flag,
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> BulkConfig:
        """Return the config the ledger recorded."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)
