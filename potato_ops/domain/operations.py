"""Bulk operations' statuses and records: an operation's row and owner, its items, their counts.

Pure: no database import. ``db.ledger`` writes and reads them; ``ops.bulk.ownership`` decides
whether an operation's owner is alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
# Shown, never stored: an operation asked to pause (``pause_requested``) that has not ended.
PAUSED = "paused"
STATUSES = (PENDING, RUNNING, PAUSED, COMPLETED, FAILED, CANCELLED, INTERRUPTED)
LIVE = (PENDING, RUNNING)  # statuses that claim an owner is at work


@dataclass(frozen=True)
class Owner:
    """Who owns (runs) an operation: host, process id, and a token unique to this run.

    The ledger's ``runner_*`` columns hold it.
    """

    host: str
    pid: int
    token: str  # "<process start time>/<random>"


@dataclass(frozen=True)
class OperationRow:
    """One row of ``ops_operations``."""

    id: str
    kind: str
    status: str
    dry_run: bool
    config: dict[str, Any]
    total_users: int
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    runner_host: str | None
    runner_pid: int | None
    runner_token: str | None
    cancel_requested: bool
    error: str | None


@dataclass(frozen=True)
class ItemResult:
    """What happened to one user of an operation."""

    user_id: str
    status: str  # completed | failed
    tries: int
    changed: bool = False
    runs_deleted: int = 0
    runs_created: int = 0
    active_flags_changed: int = 0
    duration_ms: float = 0.0
    error_class: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class ItemCounts:
    """The items of an operation, counted by status, with sums of what they did."""

    total: int = 0
    pending: int = 0
    completed: int = 0
    failed: int = 0
    changed: int = 0
    runs_deleted: int = 0
    runs_created: int = 0
    duration_ms: float = 0.0  # sum over processed users

    @property
    def processed(self) -> int:
        """Return how many users were completed or failed."""
        return self.completed + self.failed


@dataclass(frozen=True)
class ItemRow:
    """One processed item, as the result lists report it."""

    user_id: str
    status: str
    attempts: int
    changed: bool
    runs_deleted: int
    runs_created: int
    active_flags_changed: int
    error_class: str | None
    error_message: str | None
