"""Planner statistics: which tables a mass change left stale, and ANALYZE for them.

A bulk rebuild is what an operator runs right after an incident, and an incident is often a
mass rewrite (every run deleted and inserted again, a restore, a bad migration). The planner's
statistics then describe a table that no longer exists: never analyzed, it guesses that a
batch's ``user_id IN (...)`` matches most of the table, and every per-batch statement becomes
a sequential scan of ``runs`` or ``day_marks`` (the cost of one batch grows with the whole
database, the cost of the operation with its square). autovacuum would catch up eventually,
or never where it is off; the bulk cannot wait for it.

A table is stale when it was never analyzed (``reltuples`` is -1) or when more rows changed
since its last ANALYZE than autovacuum's own trigger allows (50 rows plus 10% of the rows the
statistics know of). ANALYZE samples a fixed number of rows whatever the table's size, so it
costs seconds even at a billion rows. PostgreSQL only: SQLite's planner uses its indexes for a
batch's keyed lookups with or without ``sqlite_stat1``.

A mass delete leaves a second trace: the deleted rows stay in the table and in its indexes as
dead rows until VACUUM removes them. Every run a bulk inserts is checked against the no-overlap
constraint's GiST index, and that check visits the dead entries of the user's old runs too, until
VACUUM removes them (with every run deleted, that is every run's old entry). A table is
dead-heavy when it holds more dead rows than live ones (and more than autovacuum's base threshold
of 50), which only a mass delete or rewrite leaves; VACUUM then runs at autovacuum's own pace
(its cost delay), so that the live database feels it no more than autovacuum. VACUUM keeps the
address of each dead row it finds (6 bytes) in ``maintenance_work_mem`` and reads every index of
the table through each time that memory fills: at the default 64 MB, 34 million dead runs meant
four passes over 7.5 GB of indexes. It is given the memory to hold them all at once (at most
1 GB, the most PostgreSQL 15 uses for them), so it reads each index once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Connection, Engine, text

from potato_ops.db.engine import is_postgres

log = logging.getLogger("potato_ops")

# autovacuum's defaults (autovacuum_analyze_threshold, autovacuum_analyze_scale_factor).
STALE_ROWS = 50
STALE_SHARE = 0.1

# The tables whose rows a bulk batch looks up by user, and the ledger it claims from.
BULK_TABLES = (
    "users",
    "day_marks",
    "runs",
    "ops_operation_items",
    "ops_operation_batches",
    "ops_backups",
    "ops_rebuild_history",
)

_STALE = text(
    "SELECT c.relname FROM pg_class AS c "
    "JOIN pg_stat_user_tables AS s ON s.relid = c.oid "
    "WHERE c.relname = ANY(CAST(:names AS text[])) "
    "AND c.relnamespace = CAST(current_schema() AS regnamespace) "
    "AND c.relkind IN ('r', 'p') "
    "AND (s.n_mod_since_analyze > :rows + :share * greatest(c.reltuples, 0) "
    "     OR (c.reltuples < 0 AND s.n_mod_since_analyze > 0)) "
    "ORDER BY c.relname"
)
_DEAD_HEAVY = text(
    "SELECT c.relname FROM pg_class AS c "
    "JOIN pg_stat_user_tables AS s ON s.relid = c.oid "
    "WHERE c.relname = ANY(CAST(:names AS text[])) "
    "AND c.relnamespace = CAST(current_schema() AS regnamespace) "
    "AND c.relkind IN ('r', 'p') "
    "AND s.n_dead_tup > :rows AND s.n_dead_tup > s.n_live_tup "
    "ORDER BY c.relname"
)
# VACUUM at autovacuum's pace: its cost delay, where one is set (-1 means vacuum_cost_delay's).
_AUTOVACUUM_PACE = text(
    "SELECT set_config('vacuum_cost_delay', current_setting('autovacuum_vacuum_cost_delay'), false) "
    "WHERE current_setting('autovacuum_vacuum_cost_delay') NOT IN ('-1', '-1ms')"
)
_DEAD_ROWS = text(
    "SELECT s.n_dead_tup FROM pg_stat_user_tables AS s "
    "WHERE s.relname = :name AND s.schemaname = current_schema()"
)
_MEMORY_KB = text("SELECT setting FROM pg_settings WHERE name = 'maintenance_work_mem'")
_SET_MEMORY = text("SELECT set_config('maintenance_work_mem', :kb || 'kB', false)")
DEAD_ROW_BYTES = 6
VACUUM_MEMORY_CAP_KB = 1024 * 1024
_OWNED = text(
    "SELECT c.relname FROM pg_class AS c "
    "WHERE c.relname = ANY(CAST(:names AS text[])) "
    "AND c.relnamespace = CAST(current_schema() AS regnamespace) "
    "AND pg_has_role(c.relowner, 'USAGE')"
)


def stale_tables(conn: Connection, names: Sequence[str] = BULK_TABLES) -> list[str]:
    """Return the tables among ``names`` whose planner statistics a mass change left stale."""
    if not is_postgres(conn):
        return []
    params = {"names": list(names), "rows": STALE_ROWS, "share": STALE_SHARE}
    return [name for (name,) in conn.execute(_STALE, params).all()]


def dead_heavy_tables(conn: Connection, names: Sequence[str] = BULK_TABLES) -> list[str]:
    """Return the tables among ``names`` holding more dead rows than live ones (a mass delete's)."""
    if not is_postgres(conn):
        return []
    return [name for (name,) in conn.execute(_DEAD_HEAVY, {"names": list(names), "rows": STALE_ROWS}).all()]


def vacuum_memory_kb(dead_rows: int, current_kb: int) -> int:
    """Return the ``maintenance_work_mem`` (kB) that holds ``dead_rows`` addresses in one pass.

    An eighth more than the estimate of dead rows, never less than ``current_kb``, at most 1 GB.
    """
    need = -(-dead_rows * DEAD_ROW_BYTES * 9 // (8 * 1024))
    return max(current_kb, min(need, VACUUM_MEMORY_CAP_KB))


def vacuum_tables(engine: Engine, names: Sequence[str]) -> list[str]:
    """VACUUM, at autovacuum's pace and in one pass, the tables this role owns; return those vacuumed.

    VACUUM runs outside any transaction, on a connection of its own. The others are named in a
    warning.
    """
    if not names or not is_postgres(engine):
        return []
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        owned = {name for (name,) in conn.execute(_OWNED, {"names": list(names)}).all()}
        skipped = [name for name in names if name not in owned]
        if skipped:
            log.warning(
                "%s hold more dead rows than live ones and this role cannot VACUUM them (ask their "
                "owner to): a bulk rebuild's inserts check the dead index entries until then",
                ", ".join(skipped),
            )
        conn.execute(_AUTOVACUUM_PACE)
        current_kb = int(conn.execute(_MEMORY_KB).scalar_one())
        done: list[str] = []
        for name in names:
            if name in owned:
                dead = conn.execute(_DEAD_ROWS, {"name": name}).first()
                kb = vacuum_memory_kb(int(dead[0]) if dead else 0, current_kb)
                conn.execute(_SET_MEMORY, {"kb": str(kb)})
                # A name from pg_class matching our own list, quoted: never user input.
                conn.execute(text(f'VACUUM "{name}"'))
                done.append(name)
        conn.execute(text("RESET vacuum_cost_delay"))
        conn.execute(text("RESET maintenance_work_mem"))
    return done


def analyze_tables(conn: Connection, names: Sequence[str]) -> list[str]:
    """ANALYZE the tables this role may analyze (their owner's); return those analyzed.

    The others are named in a warning: their plans stay as poor as their statistics.
    """
    if not names or not is_postgres(conn):
        return []
    owned = {name for (name,) in conn.execute(_OWNED, {"names": list(names)}).all()}
    skipped = [name for name in names if name not in owned]
    if skipped:
        log.warning(
            "planner statistics of %s are stale and this role cannot ANALYZE them (ask their owner "
            "to): a bulk rebuild's lookups may scan whole tables until they are analyzed",
            ", ".join(skipped),
        )
    done: list[str] = []
    for name in names:
        if name in owned:
            # A name from pg_class matching our own list, quoted: never user input.
            conn.execute(text(f'ANALYZE "{name}"'))
            done.append(name)
    return done
