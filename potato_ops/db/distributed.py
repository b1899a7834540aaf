"""The Citus layout: per-user tables distributed by user id and co-located, the rest placed.

``distribute_schema`` turns a schema made by ``create_schema`` (new, or a single-server
database full of data) into the distributed layout, in place and idempotently:

* ``users`` is distributed by ``id``: the anchor of the co-location group. Each per-user
  table (every table with a ``user_id`` column but the ledger's operation rows) is distributed
  by ``user_id`` with it, so everything about one user lives on one shard group and every
  statement keyed by ``user_id`` is routed to one worker. A key that does not include
  ``user_id`` is widened first (``runs``: ``(user_id, id)``); the unique email, which Citus
  cannot enforce across shards, becomes a plain index (the app keeps emails unique).
* ``feature_flags``: a reference table (tiny, read everywhere).
* ``ops_operations`` and ``ops_operation_batches`` stay plain tables on the coordinator:
  one row per operation and per batch, written by claims and fences, cheapest where no
  distributed transaction is needed for them.
* Tables with no ``user_id`` (``ops_run_records``, ``ops_scan_results``: one row per notebook
  run, per whole-database scan; ``ops_operation_tallies``: an operation's counts, written
  beside its batch rows) are left as they are: plain tables on the coordinator.

Existing rows are moved into the shards by Citus, then the coordinator's local copies are
truncated.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, inspect, text

from potato_ops.db.capture import drop_capture, install_capture
from potato_ops.db.schema import metadata
from potato_ops.errors import SchemaError

ANCHOR = "users"
REFERENCE = ("feature_flags",)
COORDINATOR_ONLY = ("ops_operations", "ops_operation_batches")


def citus_version(conn: Connection) -> str | None:
    """Return the citus extension's version in this database, or None if it is not installed."""
    if conn.dialect.name != "postgresql":
        return None
    found = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")).scalar()
    return None if found is None else str(found)


def placement(conn: Connection) -> dict[str, str]:
    """Return each distributed table's kind: 'distributed' or 'reference' (empty if none)."""
    if citus_version(conn) is None:
        return {}
    rows = conn.execute(
        text(
            "SELECT logicalrelid::regclass::text, partmethod FROM pg_dist_partition "
            "WHERE logicalrelid::regclass::text = ANY(:names)"
        ),
        {"names": [t.name for t in metadata.sorted_tables]},
    ).all()
    return {name: ("reference" if method == "n" else "distributed") for name, method in rows}


def is_distributed(conn: Connection) -> bool:
    """Return True if this database holds the distributed layout (``runs`` is distributed)."""
    return placement(conn).get("runs") == "distributed"


def _per_user_tables() -> list[str]:
    return [
        t.name
        for t in metadata.sorted_tables
        if "user_id" in t.columns and t.name not in COORDINATOR_ONLY and t.name != ANCHOR
    ]


def _widen_keys(conn: Connection, table: str, column: str) -> list[str]:
    """Make the table's primary key include column; drop unique constraints that cannot."""
    done: list[str] = []
    inspector = inspect(conn)
    pk = inspector.get_pk_constraint(table)
    if pk["constrained_columns"] and column not in pk["constrained_columns"]:
        cols = ", ".join([column, *pk["constrained_columns"]])
        conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{pk["name"]}", ADD PRIMARY KEY ({cols})'))
        done.append(f"{table}: primary key ({cols})")
    for unique in inspector.get_unique_constraints(table):
        if column in unique["column_names"]:
            continue
        if table != ANCHOR:
            raise SchemaError(
                f"{table} has a unique key without {column} ({', '.join(unique['column_names'])}): "
                "Citus cannot enforce it across shards"
            )
        cols = ", ".join(unique["column_names"])
        conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{unique["name"]}"'))
        index = f"ix_{table}_{'_'.join(unique['column_names'])}"
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({cols})"))
        done.append(f"{table}: unique ({cols}) kept as a plain index")
    return done


def distribute_schema(engine: Engine) -> list[str]:
    """Lay the schema out for Citus (see the module's docstring); return what was changed.

    Idempotent: tables already placed are left alone, so it also places tables a newer
    release added. Raises SchemaError when the citus extension is not installed.
    """
    with engine.connect() as conn:
        if citus_version(conn) is None:
            raise SchemaError(
                "the citus extension is not installed in this database: a distributed layout needs "
                "Citus (CREATE EXTENSION citus on the coordinator, with its workers added)"
            )
        placed = placement(conn)
    done: list[str] = []
    recapture = False
    plan: list[tuple[str, str, str | None]] = [(ANCHOR, "distributed", "id")]
    plan += [(name, "distributed", "user_id") for name in _per_user_tables()]
    plan += [(name, "reference", None) for name in REFERENCE]
    for table, kind, column in plan:
        if table in placed:
            continue
        with engine.begin() as conn:
            if column is not None:
                done += _widen_keys(conn, table, column)
        with engine.begin() as conn:
            # The change-capture trigger (``capture``) would fire for every row Citus moves
            # into the shards, before its table is distributed: it is put back afterwards.
            if table == "day_marks":
                recapture = drop_capture(conn)
            if kind == "reference":
                conn.execute(text("SELECT create_reference_table(:t)"), {"t": table})
            elif table == ANCHOR:
                conn.execute(text("SELECT create_distributed_table(:t, :c)"), {"t": table, "c": column})
            else:
                conn.execute(
                    text("SELECT create_distributed_table(:t, :c, colocate_with => :a)"),
                    {"t": table, "c": column, "a": ANCHOR},
                )
        with engine.begin() as conn:
            # Citus copied the rows into the shards; the coordinator's own copy is now dead weight.
            conn.execute(text("SELECT truncate_local_data_after_distributing_table(:t)"), {"t": table})
        done.append(f"{table}: {kind}" + (f" by {column}" if column else ""))
    if recapture:
        install_capture(engine)
    return done


def lay_out(engine: Engine, *, distributed: bool) -> list[str]:
    """Place the tables after ``create_schema``; return lines for the operator.

    ``distributed`` asks for the Citus layout (SchemaError without Citus). Without it, a
    database already laid out for Citus gets any newly added table placed too, and one with
    the extension but a single-server layout is told how to convert.
    """
    if engine.dialect.name != "postgresql":
        if distributed:
            raise SchemaError("a distributed layout needs PostgreSQL with the citus extension, not SQLite")
        return []
    with engine.connect() as conn:
        version = citus_version(conn)
        placed = placement(conn)
    if distributed or placed.get("runs") == "distributed":
        return [f"citus: {line}" for line in distribute_schema(engine)]
    if version is not None:
        return [f"citus {version} is installed but the tables are not distributed: run init-db --distributed"]
    return []
