"""A lost database connection costs a retry of the batch, not the whole operation.

A worker's connection can be cut under it (a failover, a network blip, an operator's
``pg_terminate_backend``). SQLAlchemy then marks the error as a lost connection and replaces
the pool's connections; the unit of work that was running (a claim, or a batch: its
transaction rolled back with the connection) is simply run again, on a fresh connection, up to
a bounded number of times in a row with a growing pause. What a batch already committed is
not redone: a retried batch reads only its users still pending, and its fence refuses a batch
another worker finished meanwhile.

Limit: when the connection drops after a claim's COMMIT was sent but before it was
acknowledged, the claim may have committed; that batch then waits for its lease to lapse
before another worker (or ``resume``) takes it.

An error that reaches the ledger or a person is one line: the driver's first line, masked,
never the SQL statement or its parameters (a claim token is one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from potato_ops.config import mask_secrets
from potato_ops.errors import PotatoOpsError

log = logging.getLogger("potato_ops")

T = TypeVar("T")

MAX_TRIES = 4  # a unit of work is tried this many times in a row before the operation fails
FIRST_PAUSE_S = 0.2  # doubled after each lost connection in a row
_MESSAGE_CHARS = 300


class ConnectionLostError(PotatoOpsError):
    """The database connection was lost more times in a row than the retry budget allows."""


def connection_lost(exc: BaseException) -> bool:
    """Return whether the error means the connection was lost (the work can be run again)."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def one_line(exc: BaseException) -> str:
    """Return ``Class: first line of the message``, masked, without SQL or its parameters."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = mask_secrets(str(cause)).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".strip()[:_MESSAGE_CHARS]


def reraise_if_connection_lost(exc: BaseException) -> None:
    """Raise exc again when it is a lost connection, so the whole unit of work is retried."""
    if connection_lost(exc):
        raise exc


def run_with_retry(work: Callable[[], T], what: str, stop: threading.Event) -> T:
    """Return what ``work`` returns, running it again after each lost connection, at most
    ``MAX_TRIES`` times in a row; then raise ConnectionLostError (one line).

    ``stop`` cuts the pause short (the run is stopping); the retry is then still made, once.
    """
    pause = FIRST_PAUSE_S
    for attempt in range(1, MAX_TRIES + 1):
        try:
            return work()
        except DBAPIError as exc:
            if not connection_lost(exc):
                raise
            if attempt == MAX_TRIES:
                raise ConnectionLostError(
                    f"lost the database connection {MAX_TRIES} times in a row ({what}): {one_line(exc)}"
                ) from None
            log.warning(
                "lost the database connection (%s; try %d of %d): %s", what, attempt, MAX_TRIES, one_line(exc)
            )
            stop.wait(pause)
            pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover
