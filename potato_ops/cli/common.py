"""What every command shares: the database option, opening storage, and error reporting."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from sqlalchemy.exc import DBAPIError

from potato_ops.config import DATABASE_URL_ENV, mask_secrets
from potato_ops.errors import NotebookExecutionError, NotebookParameterError, PotatoOpsError
from potato_ops.exitcodes import ExitCode

P = ParamSpec("P")
R = TypeVar("R")

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar=DATABASE_URL_ENV,
        show_envvar=True,
        show_default=False,
        help="Database URL (postgresql+psycopg://... or sqlite:///path). Default: the embedded SQLite file.",
    ),
]

FromDateOption = Annotated[
    str | None, typer.Option("--from", help="Partial rebuild from this date (YYYY-MM-DD).")
]
ToDateOption = Annotated[
    str | None, typer.Option("--to", help="Partial rebuild up to this date (YYYY-MM-DD).")
]


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> typer.Exit:
    """Print one masked line on stderr and return the Exit to raise."""
    typer.echo(f"error: {mask_secrets(message)}", err=True)
    return typer.Exit(int(code))


def expected_failures(func: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one line on stderr and a documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except NotebookParameterError as exc:
            raise fail(str(exc), ExitCode.INVALID_PARAMETERS) from None
        except NotebookExecutionError as exc:
            raise fail(str(exc), ExitCode.EXECUTION_FAILED) from None
        except PotatoOpsError as exc:
            raise fail(str(exc)) from None
        except DBAPIError as exc:
            # The database refused or could not be reached: say so in one line, no traceback.
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise fail(f"database error: {first}") from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
