"""Typed errors raised by potato-ops, all under one root.

::

    PotatoOpsError
    ├── ConfigError                 bad configuration (database URL, reports directory, ...)
    ├── SchemaError                 tables missing or unlike the contract
    ├── UserNotFoundError           no user with that id or email
    ├── InvalidDateRangeError       unparsable date, or from_date > to_date
    ├── InvalidTimezoneError        not an IANA timezone name
    ├── BackupError                 backup of another user, bad checksum, unrestorable backup
    ├── FeatureFlagError            a real bulk rebuild while ff.potato.runs_v2 is off
    ├── OperationNotFoundError      no bulk operation with that id
    ├── OperationRunningError       resume of an operation whose runner is still alive
    ├── MarksChangedError           a user's marks kept changing under every try of a rebuild
    ├── RuleError                   malformed alert rules file (carries the line number)
    ├── PushError                   a Pushgateway refused, could not be reached, or its URL is bad
    ├── NotebookError               runbook notebook problems
    │   └── NotebookParameterError  unknown parameter name or wrong type
    └── ReportError                 archive problems (malformed run id or index line)
        ├── SecretLeakError         an archived file would have held a secret: nothing written
        └── RecordNotArchivedError  a run ended but its record could not be archived

    KeyboardInterrupt
    └── Terminated                  SIGTERM: the command stops as on Ctrl-C (exit 143, not 130)

Every error message is safe to show: database URLs in them are masked.
"""

from __future__ import annotations


class PotatoOpsError(Exception):
    """Root of every error potato-ops raises on purpose."""


class ConfigError(PotatoOpsError):
    """Configuration is missing or invalid."""


class SchemaError(PotatoOpsError):
    """The database's tables are missing or do not match the contract."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing: list[str] = list(missing or [])


class UserNotFoundError(PotatoOpsError):
    """No user matches the given id or email."""


class InvalidDateRangeError(PotatoOpsError, ValueError):
    """A date could not be parsed, or a range has from_date after to_date."""


class InvalidTimezoneError(PotatoOpsError, ValueError):
    """The name is not an IANA timezone known to this system."""


class BackupError(PotatoOpsError):
    """A backup cannot be taken or restored (wrong user, bad checksum, conflict)."""


class FeatureFlagError(PotatoOpsError):
    """A real bulk rebuild was refused because its feature flag is off."""


class OperationNotFoundError(PotatoOpsError):
    """No bulk operation has the given id."""


class OperationRunningError(PotatoOpsError):
    """The operation's runner is still alive, so it cannot be taken over."""


class MarksChangedError(PotatoOpsError):
    """The app changed the user's marks between the rebuild's read and its commit, every try.

    Nothing was committed; running the rebuild again (when the app is quieter) is safe.
    """


class RuleError(PotatoOpsError):
    """An alert rules file is malformed; ``line`` is the 1-based line that is wrong."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


class PushError(PotatoOpsError):
    """The figures could not be pushed to (or deleted from) a Pushgateway; the URL shown is masked."""


class NotebookError(PotatoOpsError):
    """A runbook notebook could not be run."""


class NotebookParameterError(NotebookError, ValueError):
    """A parameter is unknown to the notebook or has the wrong type."""


class ReportError(PotatoOpsError):
    """An archived report could not be written or read."""


class SecretLeakError(ReportError):
    """Writing would have archived a secret; the run fails closed."""


class RecordNotArchivedError(ReportError):
    """A notebook ran (and may have committed) but its record could not be archived.

    The message says where the record was kept instead (the database), or that it was not.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or service manager stopping the command): stopped as Ctrl-C stops it.

    Not a PotatoOpsError: like Ctrl-C's KeyboardInterrupt, it stops whatever runs, and only the
    outermost layer (the CLI) turns it into an exit status.
    """
