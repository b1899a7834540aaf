"""The session-level advisory locks that tell who is at work on a bulk operation (PostgreSQL).

The owner holds an exclusive lock keyed by the operation id, and every worker (owner included) a
shared one, each on a connection of its own; the server drops them with the process or its
connection. ``ops.bulk.ownership`` decides from them whether an operation's owner is alive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from potato_ops.db.engine import LOCK_NS_OPERATION, LOCK_NS_WORKER

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = logging.getLogger("potato_ops")


def _held_by_others(conn: Connection, namespace: int, operation_id: str) -> bool:
    """Return True if another session holds the operation's lock in this namespace."""
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid = CAST(:ns AS oid) "
                "AND objid = CAST(CAST(hashtext(:op) AS bigint) & 4294967295 AS oid) "
                "AND objsubid = 2 AND granted AND pid <> pg_backend_pid())"
            ),
            {"ns": namespace, "op": operation_id},
        ).scalar_one()
    )


@contextmanager
def operation_lock(engine: Engine, operation_id: str, *, owner: bool = True) -> Iterator[bool]:
    """Hold the operation's runner lock while the block runs; yield False if it is not free.

    On PostgreSQL session-level advisory locks on a connection of their own, released (or
    dropped by the server with the process or the connection) at the end: the owner's,
    exclusive, granted only while no other worker is at work either; and every worker's
    (owner included), shared, which tells that someone is still at work. On SQLite always
    True (the runner's pid and token in the ledger say who runs it).
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    keys = {"op": operation_id}
    with engine.connect() as conn:
        got = True
        if owner:
            got = bool(
                conn.execute(
                    text("SELECT pg_try_advisory_lock(:ns, hashtext(:op))"), {"ns": LOCK_NS_OPERATION, **keys}
                ).scalar_one()
            )
            if got and _held_by_others(conn, LOCK_NS_WORKER, operation_id):
                conn.execute(
                    text("SELECT pg_advisory_unlock(:ns, hashtext(:op))"), {"ns": LOCK_NS_OPERATION, **keys}
                )
                got = False
        if got:
            conn.execute(
                text("SELECT pg_advisory_lock_shared(:ns, hashtext(:op))"), {"ns": LOCK_NS_WORKER, **keys}
            )
        conn.commit()  # keep no transaction open: the locks are session-level
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock_all()"))
                    conn.commit()
                except DBAPIError as exc:  # the connection was cut: the server dropped the locks
                    log.warning(
                        "operation %s: lock connection lost (%s)", operation_id, exc.__class__.__name__
                    )


def operation_locked(conn: Connection, operation_id: str) -> bool:
    """Return True if another session holds the operation's owner or worker lock (looked up, not taken)."""
    return _held_by_others(conn, LOCK_NS_OPERATION, operation_id) or _held_by_others(
        conn, LOCK_NS_WORKER, operation_id
    )
