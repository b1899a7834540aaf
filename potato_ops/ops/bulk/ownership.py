"""Who runs a bulk operation, and whether that runner is still at work.

Decided by something the runner holds, never by heartbeat age alone:

* PostgreSQL: the runner (the owner) holds a session-level advisory lock keyed by the
  operation id on a connection of its own for the run's life, and every worker of the
  operation (the owner's and ``bulk-worker``'s on any host) a shared one; the server drops
  them the moment the process dies or its connection is cut. Losing the lock while still
  running is possible (a network blip, a pooler): the fence in ``claims`` is what keeps such
  a runner from writing once another has taken over.
* SQLite: the runner records its host, pid and a token holding the process's start time (from
  ``/proc``, so a reused pid is not mistaken for it). On another host only the heartbeat can
  tell, so there a runner is taken for gone once its heartbeat is ``STALE_AFTER`` old.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from potato_ops.db.engine import LOCK_NS_OPERATION, LOCK_NS_WORKER, is_postgres
from potato_ops.ops.bulk.rows import OperationRow

log = logging.getLogger("potato_ops")
STALE_AFTER = timedelta(minutes=10)  # heartbeat age after which another host's runner is gone


@dataclass(frozen=True)
class Runner:
    """Who runs an operation: host, process id, and a token unique to this run."""

    host: str
    pid: int
    token: str  # "<process start time>/<random>"


_live_tokens: set[str] = set()  # runners alive in this process
_live_lock = threading.Lock()


def _process_start(pid: int) -> str | None:
    """Return the process's start time (clock ticks since boot), or None if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its exit status remains
        return None
    return fields[19]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_runner() -> Runner:
    """Return a runner identity for this process, registered as alive until released."""
    pid = os.getpid()
    token = f"{_process_start(pid) or '-'}/{uuid.uuid4().hex}"
    with _live_lock:
        _live_tokens.add(token)
    return Runner(socket.gethostname(), pid, token)


def release_runner(runner: Runner) -> None:
    """Forget a runner of this process (its run has ended)."""
    with _live_lock:
        _live_tokens.discard(runner.token)


def _process_runner_alive(op: OperationRow, now: datetime) -> bool:
    """Return True if the runner recorded on op (SQLite's way) is still at work."""
    if op.runner_pid is None or op.runner_token is None:
        return False
    if op.runner_host != socket.gethostname():
        beat = op.heartbeat_at or op.started_at or op.created_at
        return now - beat < STALE_AFTER
    if op.runner_pid == os.getpid():
        with _live_lock:
            return op.runner_token in _live_tokens
    started = op.runner_token.split("/", 1)[0]
    if started == "-" or not Path("/proc").is_dir():
        return _pid_running(op.runner_pid)
    return _process_start(op.runner_pid) == started


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


def _pg_runner_alive(conn: Connection, operation_id: str) -> bool:
    """Return True if some session holds the operation's owner or worker lock (looked up, not taken)."""
    return _held_by_others(conn, LOCK_NS_OPERATION, operation_id) or _held_by_others(
        conn, LOCK_NS_WORKER, operation_id
    )


def runner_alive(conn: Connection, op: OperationRow, now: datetime) -> bool:
    """Return True if the operation's runner is still at work."""
    if is_postgres(conn):
        return _pg_runner_alive(conn, op.id)
    return _process_runner_alive(op, now)
