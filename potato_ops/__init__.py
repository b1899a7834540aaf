"""potato-ops: rebuild, back up, restore and validate Project Potato's runs table.

The public names load on first use (PEP 562), so ``import potato_ops`` and the ``potato-ops``
command start without SQLAlchemy until something needs the database.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from potato_ops.domain.dates import fixed_clock
    from potato_ops.domain.models import (
        Backup,
        BackupMetadata,
        DayMark,
        InvariantReport,
        RebuildResult,
        Run,
        User,
        ValidationResult,
        Violation,
    )
    from potato_ops.domain.runs import group_consecutive_dates
    from potato_ops.errors import (
        BackupError,
        ConfigError,
        FeatureFlagError,
        InvalidDateRangeError,
        InvalidTimezoneError,
        OperationNotFoundError,
        OperationRunningError,
        PotatoOpsError,
        SchemaError,
        UserNotFoundError,
    )
    from potato_ops.ops.bulk.config import BulkConfig
    from potato_ops.ops.bulk.results import BulkResult, Progress
    from potato_ops.ops.repair import RepairStatus, UserRepair
    from potato_ops.storage import Storage

_LAZY: dict[str, str] = {
    "fixed_clock": "potato_ops.domain.dates",
    "group_consecutive_dates": "potato_ops.domain.runs",
    "BulkConfig": "potato_ops.ops.bulk.config",
    "BulkResult": "potato_ops.ops.bulk.results",
    "Progress": "potato_ops.ops.bulk.results",
    "RepairStatus": "potato_ops.ops.repair",
    "UserRepair": "potato_ops.ops.repair",
    "Storage": "potato_ops.storage",
    **dict.fromkeys(
        (
            "Backup",
            "BackupMetadata",
            "DayMark",
            "InvariantReport",
            "RebuildResult",
            "Run",
            "User",
            "ValidationResult",
            "Violation",
        ),
        "potato_ops.domain.models",
    ),
    **dict.fromkeys(
        (
            "BackupError",
            "ConfigError",
            "FeatureFlagError",
            "InvalidDateRangeError",
            "InvalidTimezoneError",
            "OperationNotFoundError",
            "OperationRunningError",
            "PotatoOpsError",
            "SchemaError",
            "UserNotFoundError",
        ),
        "potato_ops.errors",
    ),
}


def __getattr__(name: str) -> Any:
    """Return a public name, importing the module that defines it on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'potato_ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "Backup",
    "BackupError",
    "BackupMetadata",
    "BulkConfig",
    "BulkResult",
    "ConfigError",
    "DayMark",
    "FeatureFlagError",
    "InvalidDateRangeError",
    "InvalidTimezoneError",
    "InvariantReport",
    "OperationNotFoundError",
    "OperationRunningError",
    "PotatoOpsError",
    "Progress",
    "RebuildResult",
    "RepairStatus",
    "Run",
    "SchemaError",
    "Storage",
    "User",
    "UserNotFoundError",
    "UserRepair",
    "ValidationResult",
    "Violation",
    "__version__",
    "fixed_clock",
    "group_consecutive_dates",
]
