"""Bulk rebuilds: many users in batches across workers, with a ledger for progress and resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from potato_ops.storage import Storage


@dataclass(frozen=True)
class BulkConfig:
    """How a bulk rebuild runs (the playbook's options plus the safety ones)."""

    batch_size: int = 10
    max_workers: int = 5
    dry_run: bool = True
    from_date: date | str | None = None
    to_date: date | str | None = None
    skip_backup: bool = False
    max_failure_rate: float = 0.01
    ignore_feature_flag: bool = False


@dataclass(frozen=True)
class UserError:
    """Why one user failed."""

    user_id: str
    error_class: str
    message: str


@dataclass(frozen=True)
class UserChange:
    """What a (dry) run did or would do to one user."""

    user_id: str
    runs_to_delete: int
    runs_to_create: int
    active_flags_changed: int


@dataclass(frozen=True)
class BulkResult:
    """The outcome of a bulk operation."""

    operation_id: str
    total_users: int
    completed_users: int
    failed_users: int
    total_duration_ms: float
    average_duration_ms: float
    errors: list[UserError]
    status: str = "completed"
    dry_run: bool = True
    users_changed: int = 0
    changes: list[UserChange] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """A bulk operation's progress as the ledger records it."""

    operation_id: str
    status: str
    processed_users: int
    total_users: int
    completed_users: int
    failed_users: int
    started_at: datetime | None
    updated_at: datetime | None
    eta_seconds: float | None
    kind: str = "bulk_rebuild"
    dry_run: bool = True
    created_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


def bulk_rebuild_users(
    storage: Storage, user_ids: Sequence[str], config: BulkConfig | None = None, **kw: Any
) -> BulkResult:
    """Rebuild the users in batches; see the module docstring."""
    raise RuntimeError("bulk engine not built yet")


def get_rebuild_progress(storage: Storage, operation_id: str) -> Progress:
    """Return the operation's progress."""
    raise RuntimeError("bulk engine not built yet")


def resume_bulk_rebuild(storage: Storage, operation_id: str, **kw: Any) -> BulkResult:
    """Resume an interrupted operation."""
    raise RuntimeError("bulk engine not built yet")


def cancel_bulk_rebuild(storage: Storage, operation_id: str) -> Progress:
    """Cancel an operation at its next batch boundary."""
    raise RuntimeError("bulk engine not built yet")


def list_operations(storage: Storage, status: str | None = None, limit: int = 20) -> list[Progress]:
    """Return recent operations."""
    raise RuntimeError("bulk engine not built yet")
