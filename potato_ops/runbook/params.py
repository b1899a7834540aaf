"""Check a runbook notebook's parameters before anything is read or written.

Each ``check_*`` function takes the notebook's parameters by name, exactly as the parameters
cell declares them, and returns a frozen record of clean values, or raises
``RunbookParameterError`` naming the parameter, the value and what would be accepted. Values
may arrive as text (``papermill -r``) as well as typed literals, so both are accepted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from potato_ops import BulkConfig
from potato_ops.config import DATABASE_URL_ENV, database_url_in, default_sqlite_path, mask_secrets
from potato_ops.domain.dates import parse_date_range, parse_since, system_clock, validate_timezone
from potato_ops.errors import ConfigError, InvalidDateRangeError, InvalidTimezoneError, NotebookParameterError
from potato_ops.notebook_runs.confirm import confirm_hint, database_name, unconfirmed_live_run
from potato_ops.notebook_runs.parameters import parse_value, refuse_secrets
from potato_ops.runbook import check_token
from potato_ops.runbook.display import Shown

SCENARIOS: tuple[str, ...] = (
    "invariant_violations",
    "performance_degradation",
    "data_corruption",
)
ALL_SCENARIOS = "all"
P = ParamSpec("P")
R = TypeVar("R")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RunbookParameterError(NotebookParameterError):
    """A notebook parameter holds a value the procedure cannot use (says which, and why)."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the message is all an operator needs.
        return [
            f"{type(self).__name__}: {self}",
            "Nothing was read or written. Fix the parameter and run the notebook again.",
        ]


def checks_parameters(check: Callable[P, R]) -> Callable[P, R]:
    """Decorate a notebook's check: earlier results go stale, a live run must be confirmed
    (``confirm`` = the database's name), and a token is minted for what follows."""
    return check_token.checks_parameters(check, _refuse_unconfirmed)


def _refuse_unconfirmed(checked: object, confirm: object) -> None:
    common = getattr(checked, "common", None)
    env_var = getattr(common, "database_url_env", "") or DATABASE_URL_ENV
    why = unconfirmed_live_run(getattr(checked, "dry_run", True) is not False, confirm, env_var)
    if why:
        raise RunbookParameterError(why)


def _refuse(name: str, value: object, expected: str) -> RunbookParameterError:
    shown = mask_secrets(value if isinstance(value, str) else repr(value))
    return RunbookParameterError(f"parameter {name} = {shown!r} is not valid: expected {expected}")


def _parsed(name: str, value: object, type_name: str, *, secrets_checked: bool = True) -> object:
    """Return the value read by the one parameter parser (the one ``potato-ops run`` uses)."""
    try:
        parsed = parse_value(name, value, type_name)
        if secrets_checked:
            refuse_secrets(name, parsed)
    except NotebookParameterError as exc:
        raise RunbookParameterError(str(exc)) from None
    return parsed


def text_param(name: str, value: object) -> str:
    """Return value as stripped text."""
    return str(_parsed(name, value, "str"))


def flag_param(name: str, value: object) -> bool:
    """Return value as a bool; accepts True/False and true/false, yes/no, on/off, 1/0."""
    return bool(_parsed(name, value, "bool"))


def int_param(name: str, value: object) -> int:
    """Return value as an int within the bounds ``LIMITS`` sets for ``name``."""
    return cast(int, _parsed(name, value, "int"))  # parse_value returns the declared type


def float_param(name: str, value: object) -> float:
    """Return value as a float within the bounds ``LIMITS`` sets for ``name``."""
    return cast(float, _parsed(name, value, "float"))


def ids_param(name: str, value: object) -> tuple[str, ...]:
    """Return a list of ids; accepts a list of strings or one comma-separated string."""
    return tuple(cast(list[str], _parsed(name, value, "list[str]")))


def date_range_param(from_date: object, to_date: object) -> tuple[date | None, date | None]:
    """Return the range's bounds (None where empty); from_date must not be after to_date."""
    lo = text_param("from_date", from_date) or None
    hi = text_param("to_date", to_date) or None
    try:
        return parse_date_range(lo, hi)
    except InvalidDateRangeError as exc:
        raise RunbookParameterError(f"{exc} (dates are YYYY-MM-DD; empty means no bound)") from None


def timezone_param(name: str, value: object) -> str | None:
    """Return an IANA timezone name, or None when empty."""
    zone = text_param(name, value)
    if not zone:
        return None
    try:
        return validate_timezone(zone)
    except InvalidTimezoneError as exc:
        raise RunbookParameterError(f"parameter {name}: {exc}") from None


def url_env_param(value: object) -> str:
    """Return the name of the environment variable that holds the database URL.

    The variable named must be set, except the default one: without it, notebooks use the
    embedded SQLite database. A URL given here instead of a name is refused without echoing it.
    """
    # Parsed without the generic secret check: the message below says what to pass instead.
    name = str(_parsed("database_url_env", value, "str", secrets_checked=False))
    if "://" in name or "@" in name:
        raise RunbookParameterError(
            "parameter database_url_env holds a URL (not shown); it takes the NAME of an "
            "environment variable that holds the URL, e.g. POTATO_DATABASE_URL: notebooks "
            "never take a database URL as a parameter"
        )
    if not _ENV_NAME.fullmatch(name):
        raise _refuse("database_url_env", value, "an environment variable name like POTATO_DATABASE_URL")
    if name != DATABASE_URL_ENV and not os.environ.get(name):
        raise RunbookParameterError(
            f"environment variable {name} (named by database_url_env) is not set: set it to the "
            f"database URL, or use the default {DATABASE_URL_ENV} (unset: the embedded database)"
        )
    try:
        database_url_in(name)
    except ConfigError as exc:
        raise RunbookParameterError(f"parameter database_url_env: {exc}") from None
    return name


@dataclass(frozen=True)
class Common:
    """What every notebook takes: who runs it, for which ticket, and where the database is."""

    operator: str
    ticket: str
    database_url_env: str

    def record(self) -> dict[str, str]:
        """Return the fields kept in the archived result."""
        return {"operator": self.operator or "(not given)", "ticket": self.ticket or "(not given)"}

    @property
    def embedded(self) -> bool:
        """Return True when no database is configured and the embedded SQLite file is used."""
        return not os.environ.get(self.database_url_env)

    def embedded_warning(self) -> str:
        """Return the line that says, loudly, that the embedded database is used."""
        return (
            f"NO DATABASE CONFIGURED: ${self.database_url_env} is not set, so this run uses the "
            f"embedded SQLite database {default_sqlite_path()}, not the app's database"
        )


def _shown(value: object) -> str:
    if value is None or value == ():
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class CheckedParams(Shown):
    """The checked parameters of a notebook, shown as a list with the embedded-database warning."""

    common: Common

    def title(self) -> str:
        return "Parameters"

    def lines(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.common.embedded:
            found.append(("warn", self.common.embedded_warning()))
        for item in fields(cast(Any, self)):
            value = getattr(self, item.name)
            if isinstance(value, BulkConfig):  # shown setting by setting, as the ledger keeps it
                found.extend(("info", f"{k}: {_shown(v)}") for k, v in value.to_json().items())
            elif item.name != "common":
                found.append(("info", f"{item.name}: {_shown(value)}"))
        found.append(("info", f"operator: {self.common.operator or '(not given)'}"))
        found.append(("info", f"ticket: {self.common.ticket or '(not given)'}"))
        found.append(("info", f"database_url_env: {self.common.database_url_env}"))
        dry_run = getattr(self, "dry_run", None)
        if dry_run is True:
            found.append(("info", confirm_hint(self.common.database_url_env)))
        elif dry_run is False:
            name = database_name(self.common.database_url_env)
            found.append(("warn", f"LIVE run on the database {name!r} (confirmed)"))
        return found


def common_params(operator: object, ticket: object, database_url_env: object) -> Common:
    """Return the checked common parameters."""
    return Common(
        text_param("operator", operator), text_param("ticket", ticket), url_env_param(database_url_env)
    )


@dataclass(frozen=True)
class UserRef:
    """A user named by email or id; neither means no user was chosen."""

    email: str = ""
    user_id: str = ""

    @property
    def given(self) -> bool:
        """Return True when an email or an id was given."""
        return bool(self.email or self.user_id)

    def __str__(self) -> str:
        return self.email or self.user_id or "(no user chosen)"


def user_param(user_email: object, user_id: object) -> UserRef:
    """Return the user reference; giving both an email and an id is refused."""
    email, uid = text_param("user_email", user_email), text_param("user_id", user_id)
    if email and uid:
        raise RunbookParameterError(
            f"give user_email or user_id, not both (got user_email={email!r}, user_id={uid!r})"
        )
    if email and "@" not in email:
        raise _refuse("user_email", email, "an email address (name@domain)")
    return UserRef(email, uid)


def required_user(user: UserRef, notebook: str) -> UserRef:
    """Return the user reference, refusing none: a procedure on one user stops at once without one."""
    if not user.given:
        raise RunbookParameterError(
            f"no user chosen: {notebook} works on one user; set user_email or user_id "
            "(for example -p user_email name@example.org)"
        )
    return user


# --- one record per notebook ---------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SingleUserParams(CheckedParams):
    """01 single-user recovery and 02 partial rebuild."""

    common: Common
    user: UserRef
    dry_run: bool
    keep_backup: bool
    from_date: date | None
    to_date: date | None
    calendar_days: int


@checks_parameters
def check_single_user_recovery(
    *,
    user_email: object,
    user_id: object,
    dry_run: object,
    keep_backup: object,
    calendar_days: object,
    operator: object,
    ticket: object,
    database_url_env: object,
    confirm: object = "",  # a live run's confirmation, checked by @checks_parameters
) -> SingleUserParams:
    """Return the checked parameters of 01 (a full rebuild of one user)."""
    return _single_user(
        (None, None),
        user_email,
        user_id,
        dry_run,
        keep_backup,
        calendar_days,
        operator,
        ticket,
        database_url_env,
    )


@checks_parameters
def check_partial_rebuild(
    *,
    user_email: object,
    user_id: object,
    from_date: object,
    to_date: object,
    dry_run: object,
    keep_backup: object,
    calendar_days: object,
    operator: object,
    ticket: object,
    database_url_env: object,
    confirm: object = "",  # a live run's confirmation, checked by @checks_parameters
) -> SingleUserParams:
    """Return the checked parameters of 02 (01's, with the range to rebuild)."""
    return _single_user(
        date_range_param(from_date, to_date),
        user_email,
        user_id,
        dry_run,
        keep_backup,
        calendar_days,
        operator,
        ticket,
        database_url_env,
    )


def _single_user(
    date_range: tuple[date | None, date | None],
    user_email: object,
    user_id: object,
    dry_run: object,
    keep_backup: object,
    calendar_days: object,
    operator: object,
    ticket: object,
    database_url_env: object,
) -> SingleUserParams:
    checked = SingleUserParams(
        common_params(operator, ticket, database_url_env),
        user_param(user_email, user_id),
        flag_param("dry_run", dry_run),
        flag_param("keep_backup", keep_backup),
        *date_range,
        int_param("calendar_days", calendar_days),
    )
    required_user(checked.user, "this single-user procedure")
    return checked


@dataclass(frozen=True, repr=False)
class BulkParams(CheckedParams):
    """03 bulk recovery: the users and the library's own ``BulkConfig`` (its defaults are 03's)."""

    common: Common
    user_ids: tuple[str, ...]  # empty: every user
    config: BulkConfig
    operation_id: str = ""  # an operation to pause or to continue instead of starting one
    pause: bool = False

    @property
    def dry_run(self) -> bool:
        """Return True when the rebuild only computes and shows its changes."""
        return self.config.dry_run

    @property
    def skip_backup(self) -> bool:
        """Return True when no backups are kept."""
        return self.config.skip_backup


@checks_parameters
def check_bulk_recovery(
    *,
    user_ids: object,
    batch_size: object,
    max_workers: object,
    dry_run: object,
    from_date: object,
    to_date: object,
    skip_backup: object,
    max_failure_rate: object,
    ignore_feature_flag: object,
    max_replica_lag: object,
    max_active_sessions: object,
    nice_ratio: object,
    batch_seconds: object,
    min_batch_size: object,
    max_batch_size: object,
    window: object,
    window_timezone: object,
    operation_id: object,
    pause: object,
    operator: object,
    ticket: object,
    database_url_env: object,
    confirm: object = "",  # a live run's confirmation, checked by @checks_parameters
) -> BulkParams:
    """Return the checked parameters of 03 (an empty text or a 0 leaves a throttle setting unset)."""
    lo, hi = date_range_param(from_date, to_date)
    common = common_params(operator, ticket, database_url_env)
    ids = ids_param("user_ids", user_ids)
    try:
        config = BulkConfig(
            batch_size=int_param("batch_size", batch_size),
            max_workers=int_param("max_workers", max_workers),
            dry_run=flag_param("dry_run", dry_run),
            from_date=lo,
            to_date=hi,
            skip_backup=flag_param("skip_backup", skip_backup),
            max_failure_rate=float_param("max_failure_rate", max_failure_rate),
            ignore_feature_flag=flag_param("ignore_feature_flag", ignore_feature_flag),
            max_replica_lag=text_param("max_replica_lag", max_replica_lag) or None,
            max_active_sessions=int_param("max_active_sessions", max_active_sessions) or None,
            nice_ratio=float_param("nice_ratio", nice_ratio),
            batch_seconds=float_param("batch_seconds", batch_seconds) or None,
            min_batch_size=int_param("min_batch_size", min_batch_size),
            max_batch_size=int_param("max_batch_size", max_batch_size) or None,
            window=text_param("window", window) or None,
            window_timezone=text_param("window_timezone", window_timezone) or "UTC",
        )
    except ConfigError as exc:
        raise RunbookParameterError(f"{exc}") from None
    operation = text_param("operation_id", operation_id)
    pausing = flag_param("pause", pause)
    if pausing and not operation:
        raise RunbookParameterError("pause=True needs the operation to pause: give operation_id")
    return BulkParams(common, ids, config, operation, pausing)


@dataclass(frozen=True, repr=False)
class TimezoneParams(CheckedParams):
    """04 timezone migration."""

    common: Common
    user: UserRef
    new_timezone: str | None
    since: datetime | None
    dry_run: bool


@checks_parameters
def check_timezone_migration(
    *,
    user_email: object,
    user_id: object,
    new_timezone: object,
    since: object,
    dry_run: object,
    operator: object,
    ticket: object,
    database_url_env: object,
    confirm: object = "",  # a live run's confirmation, checked by @checks_parameters
) -> TimezoneParams:
    """Return the checked parameters of 04; a new timezone needs a user."""
    user = user_param(user_email, user_id)
    zone = timezone_param("new_timezone", new_timezone)
    if zone and not user.given:
        raise RunbookParameterError(
            f"new_timezone={zone!r} needs the user to move: give user_email or user_id"
        )
    return TimezoneParams(
        common_params(operator, ticket, database_url_env),
        user,
        zone,
        since_param(since, allow_empty=True),
        flag_param("dry_run", dry_run),
    )


def since_param(value: object, *, allow_empty: bool) -> datetime | None:
    """Return the start of a window: a duration back from now (24h, 7d) or an ISO datetime."""
    text = text_param("since", value)
    if not text and allow_empty:
        return None
    try:
        return parse_since(text, system_clock())
    except InvalidDateRangeError as exc:
        raise RunbookParameterError(f"parameter since: {exc}") from None


@dataclass(frozen=True, repr=False)
class RecoveryParams(CheckedParams):
    """05 error recovery."""

    common: Common
    scenarios: tuple[str, ...]
    dry_run: bool
    slow_threshold_ms: float
    recent_days: int
    still_slow_ms: float


@checks_parameters
def check_error_recovery(
    *,
    scenario: object,
    dry_run: object,
    slow_threshold_ms: object,
    recent_days: object,
    still_slow_ms: object,
    operator: object,
    ticket: object,
    database_url_env: object,
    confirm: object = "",  # a live run's confirmation, checked by @checks_parameters
) -> RecoveryParams:
    """Return the checked parameters of 05; scenario is one of SCENARIOS or ``all``."""
    chosen = text_param("scenario", scenario).lower()
    if chosen == ALL_SCENARIOS:
        scenarios = SCENARIOS
    elif chosen in SCENARIOS:
        scenarios = (chosen,)
    else:
        raise _refuse("scenario", scenario, "one of " + ", ".join((*SCENARIOS, ALL_SCENARIOS)))
    return RecoveryParams(
        common_params(operator, ticket, database_url_env),
        scenarios,
        flag_param("dry_run", dry_run),
        float_param("slow_threshold_ms", slow_threshold_ms),
        int_param("recent_days", recent_days),
        float_param("still_slow_ms", still_slow_ms),
    )


@dataclass(frozen=True, repr=False)
class RestoreParams(CheckedParams):
    """06 restore from backup."""

    common: Common
    user: UserRef
    backup_id: int | None  # None: the backup taken before the incident's first change
    dry_run: bool
    calendar_days: int
    since: datetime | None = None  # the incident's start, when no ticket links its changes


@checks_parameters
def check_restore_from_backup(
    *,
    user_email: object,
    user_id: object,
    backup_id: object,
    dry_run: object,
    calendar_days: object,
    operator: object,
    ticket: object,
    database_url_env: object,
    since: object = "",
    confirm: object = "",  # a live run's confirmation, checked by @checks_parameters
) -> RestoreParams:
    """Return the checked parameters of 06; backup_id 0 means the backup taken before the
    incident's first change (the ticket's, else the oldest since ``since``, else the newest)."""
    chosen = int_param("backup_id", backup_id)
    checked = RestoreParams(
        common_params(operator, ticket, database_url_env),
        user_param(user_email, user_id),
        chosen or None,
        flag_param("dry_run", dry_run),
        int_param("calendar_days", calendar_days),
        since_param(since, allow_empty=True),
    )
    required_user(checked.user, "restore from backup")
    return checked


@dataclass(frozen=True, repr=False)
class AuditParams(CheckedParams):
    """07 monitoring audit."""

    common: Common
    since: str
    slow_threshold_ms: float
    scan: bool
    top_slow_users: int
    alert_rules: Path | None


@checks_parameters
def check_monitoring_audit(
    *,
    since: object,
    slow_threshold_ms: object,
    scan: object,
    top_slow_users: object,
    alert_rules: object,
    operator: object,
    ticket: object,
    database_url_env: object,
) -> AuditParams:
    """Return the checked parameters of 07; alert_rules, when given, must be a readable file."""
    window = text_param("since", since) or "24h"
    since_param(window, allow_empty=False)
    rules = text_param("alert_rules", alert_rules)
    path = Path(rules).expanduser() if rules else None
    if path is not None and not path.is_file():
        raise _refuse("alert_rules", rules, "the path of an alert rules YAML file, or empty")
    return AuditParams(
        common_params(operator, ticket, database_url_env),
        window,
        float_param("slow_threshold_ms", slow_threshold_ms),
        flag_param("scan", scan),
        int_param("top_slow_users", top_slow_users),
        path,
    )


@dataclass(frozen=True, repr=False)
class TroubleshootParams(CheckedParams):
    """08 troubleshooting."""

    common: Common
    user: UserRef
    slow_threshold_ms: float
    many_marks: int
    calendar_days: int


@checks_parameters
def check_troubleshooting(
    *,
    user_email: object,
    user_id: object,
    slow_threshold_ms: object,
    many_marks: object,
    calendar_days: object,
    operator: object,
    ticket: object,
    database_url_env: object,
) -> TroubleshootParams:
    """Return the checked parameters of 08."""
    return TroubleshootParams(
        common_params(operator, ticket, database_url_env),
        user_param(user_email, user_id),
        float_param("slow_threshold_ms", slow_threshold_ms),
        int_param("many_marks", many_marks),
        int_param("calendar_days", calendar_days),
    )
