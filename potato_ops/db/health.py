"""What the database says about its own health, as the throttle of a bulk operation reads it.

PostgreSQL only (SQLite has no standbys and no sessions of others to count):

* the replay lag of every standby, in bytes of WAL, as the primary sees it in
  ``pg_stat_replication`` (the WAL the primary has written that the standby has not yet
  replayed: what a read replica serves stale, and what the primary keeps on disk for it);
* the number of active client sessions (``pg_stat_activity``, every database of the server,
  this session left out), as gh-ost's ``Threads_running``: the bulk's own workers count too.

The lag columns are visible to a superuser or a member of ``pg_monitor``; for others they
read NULL, which is returned as an unknown lag (None).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class StandbyLag:
    """One standby's replay lag as the primary sees it (None: not visible to this role)."""

    standby: str
    lag_bytes: int | None


_LAGS = text(
    "SELECT coalesce(nullif(application_name, ''), host(client_addr), CAST(pid AS text)), "
    "CAST(pg_wal_lsn_diff(pg_current_wal_lsn(), "
    "coalesce(replay_lsn, flush_lsn, write_lsn, sent_lsn)) AS bigint) "
    "FROM pg_stat_replication ORDER BY 1"
)
_ACTIVE = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


def standby_lags(conn: Connection) -> list[StandbyLag]:
    """Return every connected standby's replay lag in bytes (empty: no standby)."""
    return [StandbyLag(str(name), None if lag is None else int(lag)) for name, lag in conn.execute(_LAGS)]


def active_sessions(conn: Connection) -> int:
    """Return how many client sessions of the server are running a statement (this one aside)."""
    return int(conn.execute(_ACTIVE).scalar_one())
