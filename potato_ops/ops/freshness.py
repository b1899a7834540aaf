"""A single-user rebuild commits only runs computed from marks that are still the committed ones.

On PostgreSQL the app may commit a mark between the rebuild's read and its commit (it does not
know the tool's locks). The rebuild reads the user's capture position (``db.capture``) under
its lock, before the marks; just before it commits, it locks the user's capture row and reads
the position again. Equal: no change committed in between, and none can until the rebuild
commits (the app's trigger waits on that row lock for the moment it takes). Different: the
rebuild rolls back and redoes itself. Its last try (of ``MAX_TRIES``) locks the capture row
before it reads, so the app's writes of that one user wait for the rebuild's commit instead
of racing it once more; should the marks still differ, it fails with ``MarksChangedError``.
SQLite needs none of it: a writing transaction holds the database's write lock from its
first read, so the app cannot commit in between.
"""

from __future__ import annotations

from sqlalchemy import Connection

from potato_ops.db import capture
from potato_ops.db.engine import is_postgres

MAX_TRIES = 3


class MarksChanged(Exception):
    """Raised inside the rebuild's transaction: the user's marks changed since they were read."""


def read_position(conn: Connection, user_id: str, *, hold: bool = False) -> int | None:
    """Return the user's capture position (call under the user's lock, before reading marks).

    With ``hold`` the capture row is locked from here to the commit: no change can commit
    meanwhile (the app's trigger waits).
    """
    if not is_postgres(conn):
        return None
    return capture.hold_position(conn, user_id) if hold else capture.position(conn, user_id)


def ensure_unchanged(conn: Connection, user_id: str, seen: int | None, *, hold: bool) -> None:
    """Raise MarksChanged if a change to the user's marks committed since ``seen`` was read.

    With ``hold`` the user's capture row stays locked until the transaction ends, so no change
    can commit between this check and the commit.
    """
    if not is_postgres(conn):
        return
    now = capture.hold_position(conn, user_id) if hold else capture.position(conn, user_id)
    if not capture.unchanged(seen, now):
        raise MarksChanged(user_id)
