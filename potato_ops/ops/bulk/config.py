"""How a bulk rebuild runs: ``BulkConfig``, checked when made, stored in the ledger as JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Any

from potato_ops.domain.dates import parse_date_range
from potato_ops.domain.sizes import format_size, parse_size
from potato_ops.domain.window import Window
from potato_ops.errors import ConfigError

MAX_WORKERS = 16  # the pool holds 20 connections; one is the runner lock's
ADAPTIVE_MAX_FACTOR = 10  # --batch-seconds without --max-batch-size: up to 10x --batch-size


@dataclass(frozen=True)
class BulkConfig:
    """How a bulk rebuild runs (the playbook's options plus the safety ones).

    Checked when made: ConfigError for batch_size or max_workers below 1 (or max_workers
    above 16) or max_failure_rate outside [0, 1]; InvalidDateRangeError for dates.

    The throttle (``potato_ops.ops.bulk.throttle``): no batch starts while a standby's replay
    lag exceeds ``max_replica_lag`` (bytes, or a size such as ``"16MB"``), while more than
    ``max_active_sessions`` client sessions are active, or outside ``window``
    (``"01:00-05:00"`` in ``window_timezone``); after each batch a worker sleeps
    ``nice_ratio`` times the batch's time. With ``batch_seconds`` each transaction's size is
    adapted toward that duration, between ``min_batch_size`` and ``max_batch_size`` (default
    10x ``batch_size``), starting at ``batch_size``.
    """

    batch_size: int = 10
    max_workers: int = 5
    dry_run: bool = True
    from_date: date | str | None = None
    to_date: date | str | None = None
    skip_backup: bool = False
    max_failure_rate: float = 0.01
    ignore_feature_flag: bool = False
    max_replica_lag: int | str | None = None
    max_active_sessions: int | None = None
    nice_ratio: float = 0.0
    batch_seconds: float | None = None
    min_batch_size: int = 1
    max_batch_size: int | None = None
    window: str | None = None
    window_timezone: str = "UTC"

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
        self._check_throttle()

    def _check_throttle(self) -> None:
        if self.max_replica_lag is not None:
            # Stored as bytes, so the ledger's copy is the number the workers compare with.
            object.__setattr__(self, "max_replica_lag", parse_size(self.max_replica_lag, "max_replica_lag"))
        sessions = self.max_active_sessions
        bad = isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1
        if sessions is not None and bad:
            raise ConfigError(f"max_active_sessions must be a whole number of at least 1, not {sessions!r}")
        nice = self.nice_ratio
        if isinstance(nice, bool) or not isinstance(nice, int | float) or not 0 <= nice <= 100:
            raise ConfigError(f"nice_ratio must be between 0 and 100, not {nice!r}")
        seconds = self.batch_seconds
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise ConfigError(f"batch_seconds must be a number of seconds above 0, not {seconds!r}")
        for name in ("min_batch_size", "max_batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
        lo, hi = self.batch_bounds
        if not lo <= self.batch_size <= hi:
            raise ConfigError(
                f"batch_size {self.batch_size} must lie between min_batch_size {lo} and max_batch_size {hi}"
            )
        self.maintenance_window()

    @property
    def batch_bounds(self) -> tuple[int, int]:
        """Return (smallest, largest) users per transaction."""
        hi = self.max_batch_size
        if hi is None:
            hi = self.batch_size * ADAPTIVE_MAX_FACTOR if self.batch_seconds is not None else self.batch_size
        return self.min_batch_size, hi

    @property
    def claim_size(self) -> int:
        """Return the users per claimed batch: the largest transaction when sizes adapt."""
        return self.batch_bounds[1] if self.batch_seconds is not None else self.batch_size

    def maintenance_window(self) -> Window | None:
        """Return the window batches may start in, or None (any time); ConfigError if malformed."""
        return None if self.window is None else Window.parse(self.window, self.window_timezone)

    def throttle_summary(self) -> str:
        """Return the throttle settings in a few words ("" when none is set)."""
        parts = []
        if self.max_replica_lag is not None:
            parts.append(f"replica lag <= {format_size(int(self.max_replica_lag))}")
        if self.max_active_sessions is not None:
            parts.append(f"active sessions <= {self.max_active_sessions}")
        window = self.maintenance_window()
        if window is not None:
            parts.append(f"window {window}")
        if self.nice_ratio:
            parts.append(f"nice ratio {self.nice_ratio:g}")
        if self.batch_seconds is not None:
            lo, hi = self.batch_bounds
            parts.append(f"batches of {self.batch_seconds:g} s ({lo}..{hi} users)")
        return ", ".join(parts)

    def postgres_only_option(self) -> str | None:
        """Return the first option set that only PostgreSQL can honour (standbys, sessions)."""
        if self.max_replica_lag is not None:
            return "max_replica_lag"
        if self.max_active_sessions is not None:
            return "max_active_sessions"
        return None

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
            "max_replica_lag": self.max_replica_lag,
            "max_active_sessions": self.max_active_sessions,
            "nice_ratio": self.nice_ratio,
            "batch_seconds": self.batch_seconds,
            "min_batch_size": self.min_batch_size,
            "max_batch_size": self.max_batch_size,
            "window": self.window,
            "window_timezone": self.window_timezone,
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> BulkConfig:
        """Return the config the ledger recorded."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)
