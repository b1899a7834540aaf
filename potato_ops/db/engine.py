"""Engines, transactions and per-user locks for both dialects.

Why the locks are enough:

* PostgreSQL: every writer of a user's runs (single rebuild, bulk batch, restore) first takes a
  transaction-scoped advisory lock keyed by the user id, in a fixed order, then reads and writes
  in READ COMMITTED. A second writer of the same user waits until the first commits, and its
  reads then see the first one's result, so no two rebuilds interleave. The exclusion constraint
  and the partial unique index refuse any overlap or second active run whatever happens, and a
  transaction commits all of a user's changes at once, so readers see old runs or new runs.
  The app writing marks meanwhile is safe: a rebuild works from one read of the marks, and
  validates the runs it wrote against that same read before it commits.
* SQLite: a writing transaction starts with BEGIN IMMEDIATE, which takes the database's single
  write lock before the first read, so writers are fully serialized; WAL mode lets readers go on
  reading the last committed state meanwhile; a busy timeout makes waiters wait, not fail.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Executable, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import Compiled

log = logging.getLogger("potato_ops")

SQLITE_BUSY_TIMEOUT_MS = 60_000
# Namespaces of advisory lock keys (first int of the two-int form), so they never collide
# with locks the app may take.
LOCK_NS_USER = 0x504F5401
LOCK_NS_OPERATION = 0x504F5402  # held exclusively by an operation's owner (its runner)
LOCK_NS_WORKER = 0x504F5403  # held shared by every worker of an operation (owner included)
# SQLite allows 32766 bound variables; keep IN lists well below.
IN_CHUNK = 900


# Enough connections for the most bulk workers (MAX_WORKERS) and the runner's own.
_POOL: dict[str, Any] = {"pool_size": 12, "max_overflow": 8}


def make_engine(url: str) -> Engine:
    """Return an engine for url with this package's per-dialect settings."""
    if url.startswith("sqlite"):
        # A file's connections are pooled (a memory database keeps its one): opening one per
        # transaction, and the checkpoint when the last one closes, cost more than a
        # single-user rebuild. SQLite's write lock, not the pool, serializes writers.
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **({} if ":memory:" in url or url == "sqlite://" else _POOL),
        )
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per checkout; recycle instead of holding stale sockets.
    return create_engine(url, **_POOL, pool_recycle=1800)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can ask for IMMEDIATE.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("potato_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def is_postgres(conn_or_engine: Connection | Engine) -> bool:
    """Return True on PostgreSQL."""
    return conn_or_engine.dialect.name == "postgresql"


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """Yield a connection inside a writing transaction; commit on success, else roll back."""
    with engine.connect() as conn:
        conn = conn.execution_options(potato_write=True)
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """Yield a connection for reads (a deferred transaction, rolled back at the end)."""
    with engine.connect() as conn:
        yield conn


def batch_statements(conn: Connection) -> None:
    """Say that this transaction's statements each touch one batch's users: no JIT (PostgreSQL).

    PostgreSQL compiles a statement whose estimated cost passes ``jit_above_cost``, and on the
    statistics a mass load or rewrite leaves, a batch's statement is estimated at the table's
    size: each then spends tens of milliseconds compiling code for a few thousand rows, more than
    running it. A bulk batch's statements are bounded by its users, so JIT never pays there; the
    whole-table scans (validate, audit) keep it.
    """
    if is_postgres(conn):
        conn.execute(text("SET LOCAL jit = off"))


def lock_users(conn: Connection, user_ids: Sequence[str]) -> None:
    """Take the per-user write locks for this transaction (PostgreSQL; SQLite holds the db lock).

    Keys are taken in ascending key order, so two transactions locking overlapping sets of
    users cannot deadlock.
    """
    if not is_postgres(conn) or not user_ids:
        return
    conn.execute(
        text(
            # OFFSET 0 keeps the ordered subquery from being flattened: locks go in key order.
            "SELECT count(pg_advisory_xact_lock(:ns, k)) FROM "
            "(SELECT DISTINCT hashtext(u) AS k FROM unnest(CAST(:uids AS text[])) AS u "
            "ORDER BY k OFFSET 0) AS keys"
        ),
        {"ns": LOCK_NS_USER, "uids": list(user_ids)},
    )


# (statement, dialect, parameter names) -> the SQL and, per positional slot, the parameter's
# name and its type's conversion for the driver.
_Slots = list[tuple[str, Callable[[Any], Any] | None]]
_PREPARED: dict[tuple[int, str, tuple[str, ...]], tuple[Executable, str, _Slots]] = {}


def _prepare(conn: Connection, stmt: Executable, keys: tuple[str, ...]) -> tuple[str, _Slots]:
    key = (id(stmt), conn.dialect.name, keys)
    found = _PREPARED.get(key)
    if found is None or found[0] is not stmt:
        dialect = conn.dialect
        compiled: Compiled = stmt.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
        binds = compiled.binds  # type: ignore[attr-defined]
        slots: _Slots = [
            (name, binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or ()  # type: ignore[attr-defined]
        ]
        found = (stmt, compiled.string, slots)
        _PREPARED[key] = found
    return found[1], found[2]


def run_prepared(
    conn: Connection, stmt: Executable, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """Execute a statement built once at import; return its rows (none for a plain write).

    On SQLite the statement, compiled once, goes to the driver's cursor in the connection's
    transaction, each parameter converted by its column type as SQLAlchemy would: its own
    execution costs more there than the small statements of a single-user rebuild (rows
    come back as the driver gives them: dates as ISO text, booleans as 0/1). A list of
    parameter sets is an executemany, which returns no rows. Elsewhere ``conn.execute``.
    Only for module-level statements: each is cached for the life of the process.
    """
    if conn.dialect.name != "sqlite" or not params:
        result = conn.execute(stmt, params)
        return [tuple(row) for row in result] if result.returns_rows else []
    sets: Sequence[Mapping[str, Any]] = [params] if isinstance(params, Mapping) else params
    sql, slots = _prepare(conn, stmt, tuple(sets[0]))
    driver_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if not isinstance(params, Mapping):
            cursor.executemany(sql, [_bound(slots, p) for p in sets])
            return []
        cursor.execute(sql, _bound(slots, params))
        return cursor.fetchall() if cursor.description else []
    except driver_error as exc:  # raised as SQLAlchemy would: IntegrityError and the rest
        raise DBAPIError.instance(sql, params, exc, driver_error) from exc
    finally:
        cursor.close()


def _bound(slots: _Slots, params: Mapping[str, Any]) -> list[Any]:
    return [params[name] if convert is None else convert(params[name]) for name, convert in slots]


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of at most size items."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def server_version(conn: Connection) -> str:
    """Return the database server's version string."""
    if is_postgres(conn):
        return str(conn.execute(text("SHOW server_version")).scalar_one())
    return "SQLite " + str(conn.execute(text("SELECT sqlite_version()")).scalar_one())
