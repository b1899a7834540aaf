"""potato-ops: rebuild, back up, restore and validate Project Potato's runs table."""

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
from potato_ops.storage import Storage

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
    "Run",
    "SchemaError",
    "Storage",
    "User",
    "UserNotFoundError",
    "ValidationResult",
    "Violation",
    "__version__",
    "fixed_clock",
    "group_consecutive_dates",
]
