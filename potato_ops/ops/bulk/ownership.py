"""Who owns (runs) a bulk operation, and whether that owner is still at work.

Decided by something the owner holds, never by heartbeat age alone:

* PostgreSQL: the owner holds a session-level advisory lock keyed by the
  operation id on a connection of its own for the run's life, and every worker of the
  operation (the owner's and ``bulk-worker``'s on any host) a shared one; the server drops
  them the moment the process dies or its connection is cut. Losing the lock while still
  running is possible (a network blip, a pooler): the fence in ``db.claims`` is what keeps such
  an owner from writing once another has taken over.
* SQLite: the owner records its host, pid and a token holding the process's start time (from
  ``/proc``, so a reused pid is not mistaken for it). On another host only the heartbeat can
  tell, so there an owner is taken for gone once its heartbeat is ``STALE_AFTER`` old.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from potato_ops.db.engine import is_postgres
from potato_ops.db.locks import operation_locked
from potato_ops.domain.operations import OperationRow, Owner

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger("potato_ops")
STALE_AFTER = timedelta(minutes=10)  # heartbeat age after which another host's owner is gone


_live_tokens: set[str] = set()  # owners alive in this process
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


def new_owner() -> Owner:
    """Return a runner identity for this process, registered as alive until released."""
    pid = os.getpid()
    token = f"{_process_start(pid) or '-'}/{uuid.uuid4().hex}"
    with _live_lock:
        _live_tokens.add(token)
    return Owner(socket.gethostname(), pid, token)


def release_owner(owner: Owner) -> None:
    """Forget a runner of this process (its run has ended)."""
    with _live_lock:
        _live_tokens.discard(owner.token)


def _process_owner_alive(op: OperationRow, now: datetime) -> bool:
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


def owner_alive(conn: Connection, op: OperationRow, now: datetime) -> bool:
    """Return True if the operation's runner is still at work."""
    if is_postgres(conn):
        return operation_locked(conn, op.id)
    return _process_owner_alive(op, now)
