"""What every command shares: the options, opening the database, and error reporting.

Imported by ``potato-ops --help``, so it imports nothing heavy: SQLAlchemy, polars and the
notebook libraries load inside the commands that use them.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer

from potato_ops.config import DATABASE_URL_ENV, REPORTS_DIR_ENV, default_sqlite_path, mask_secrets
from potato_ops.errors import NotebookParameterError, PotatoOpsError, Terminated
from potato_ops.exitcodes import ExitCode

if TYPE_CHECKING:
    from potato_ops.storage import Storage

P = ParamSpec("P")
R = TypeVar("R")

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        envvar=DATABASE_URL_ENV,
        show_envvar=True,
        show_default=False,
        help="Database URL (postgresql+psycopg://... or sqlite:///path). Default: the embedded SQLite file.",
    ),
]

FromDateOption = Annotated[
    str | None,
    typer.Option(
        "--from", metavar="DATE", help="Partial rebuild from this date (YYYY-MM-DD).", show_default=False
    ),
]
ToDateOption = Annotated[
    str | None,
    typer.Option(
        "--to", metavar="DATE", help="Partial rebuild up to this date (YYYY-MM-DD).", show_default=False
    ),
]
ReportsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--reports-dir",
        envvar=REPORTS_DIR_ENV,
        show_envvar=True,
        show_default=False,
        help="Folder of archived runs. Default: ./reports.",
    ),
]
UserIdOption = Annotated[
    str | None, typer.Option("--user-id", metavar="ID", help="The user's id.", show_default=False)
]
EmailOption = Annotated[
    str | None, typer.Option("--email", metavar="EMAIL", help="The user's email.", show_default=False)
]

# Library messages name parameters by their Python names; a person typed the option.
_OPTION_WORDS: tuple[tuple[str, str], ...] = (
    ("min_batch_size", "--min-batch-size"),  # before batch_size, which it holds
    ("max_batch_size", "--max-batch-size"),
    ("max_replica_lag", "--max-replica-lag"),
    ("max_active_sessions", "--max-active-sessions"),
    ("nice_ratio", "--nice-ratio"),
    ("batch_seconds", "--batch-seconds"),
    ("window time zone", "--window-timezone"),
    ("from_date", "--from"),
    ("to_date", "--to"),
    ("batch_size", "--batch-size"),
    ("max_workers", "--workers"),
    ("max_failure_rate", "--max-failure-rate"),
)


def option_words(message: str) -> str:
    """Return the message with library parameter names replaced by the options a person typed."""
    for word, option in _OPTION_WORDS:
        message = message.replace(word, option)
    return message


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> typer.Exit:
    """Print one masked line on stderr and return the Exit to raise."""
    first = mask_secrets(message).strip().splitlines()
    typer.echo(f"error: {first[0] if first else 'failed'}", err=True)
    return typer.Exit(int(code))


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


def _stopped(word: str, exc: KeyboardInterrupt) -> None:
    """Say the command was stopped, and what the stopped work left (its notes: a record, an id)."""
    typer.echo(word, err=True)
    for note in getattr(exc, "__notes__", ()):
        typer.echo(mask_secrets(str(note)), err=True)


def expected_failures(func: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one line on stderr and a documented exit code.

    SIGTERM stops the command as Ctrl-C does (a bulk operation finishes the batches in hand and
    is recorded as interrupted, to be resumed) and exits 143 where Ctrl-C exits 130.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # Only the main thread may set handlers; a handler set already (not the default) is kept.
        ours = threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        )
        if ours:
            signal.signal(signal.SIGTERM, _terminated)
        try:
            return func(*args, **kwargs)
        except NotebookParameterError as exc:
            raise fail(option_words(str(exc)), ExitCode.INVALID_PARAMETERS) from None
        except PotatoOpsError as exc:
            raise fail(option_words(str(exc))) from None
        except Terminated as exc:
            _stopped("terminated (SIGTERM)", exc)
            sys.exit(ExitCode.TERMINATED)
        except KeyboardInterrupt as exc:
            _stopped("interrupted", exc)
            sys.exit(ExitCode.INTERRUPTED)
        except Exception as exc:
            # Loaded only when something failed: --help never pays for SQLAlchemy.
            from sqlalchemy.exc import DBAPIError

            if isinstance(exc, DBAPIError):
                # The database refused or could not be reached: one line, no traceback.
                first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise fail(f"database error: {first}") from None
            if _driver_error(exc):  # raised through the driver itself (the seed's COPY)
                lines = str(exc).strip().splitlines()
                raise fail(f"database error: {lines[0] if lines else type(exc).__name__}") from None
            raise
        finally:
            if ours:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return wrapper


def _driver_error(exc: Exception) -> bool:
    """Return True for an error of the database drivers themselves (psycopg, sqlite3)."""
    import sqlite3

    import psycopg

    return isinstance(exc, (psycopg.Error, sqlite3.Error))


def sqlite_file(database_url: str | None) -> Path | None:
    """Return the SQLite file a URL (or the default) names, or None for PostgreSQL and memory."""
    url = database_url or os.environ.get(DATABASE_URL_ENV)
    if not url:
        return default_sqlite_path()
    if not url.startswith("sqlite"):
        return None
    _, _, path = url.partition(":///")
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def open_storage(database_url: str | None, *, must_exist: bool = False) -> Storage:
    """Return the storage the URL names; with must_exist, a missing SQLite file is refused.

    Opening SQLite creates the file; a command that only reads or changes data must never leave an empty
    database behind, so it checks first and names what is missing.
    """
    if must_exist:
        path = sqlite_file(database_url)
        if path is not None and not path.is_file():
            if not path.parent.is_dir():
                raise fail(f"database folder {path.parent} does not exist")
            raise fail(f"database file {path} does not exist (potato-ops init-db creates it)")
    from potato_ops.storage import Storage

    return Storage.connect(database_url)


def resolve_user(storage: Storage, user_id: str | None, email: str | None) -> str:
    """Return the id of the user named by exactly one of --user-id / --email; the user must exist."""
    if bool(user_id) == bool(email):
        raise fail("give exactly one of --user-id or --email", ExitCode.USAGE)
    if user_id:
        return storage.get_user(user_id).id
    return storage.get_user_by_email(email or "").id
