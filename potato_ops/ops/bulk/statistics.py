"""Keep the planner's statistics fit for a bulk operation's keyed lookups while it runs.

Before the first batch, the tables a mass delete left holding more dead rows than live ones are
vacuumed (a dry run only says so): see ``db.statistics``.

Checked when a run starts (a mass change just before it, the usual case after an incident,
leaves them stale) and again every ``RECHECK_S`` while it runs (an operation that fills every
user's missing runs grows ``runs`` from nothing, which its statistics taken at the start do not
know). See ``db.statistics`` for what stale means and why it matters.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_secrets
from potato_ops.db.engine import is_postgres, read_connection, write_transaction
from potato_ops.db.statistics import analyze_tables, dead_heavy_tables, stale_tables, vacuum_tables

log = logging.getLogger("potato_ops")

RECHECK_S = 30.0


def freshen_statistics(engine: Engine) -> list[str]:
    """ANALYZE the bulk's tables whose statistics are stale; return the tables analyzed."""
    if not is_postgres(engine):
        return []
    with read_connection(engine) as conn:
        stale = stale_tables(conn)
    if not stale:
        return []
    t0 = time.perf_counter()
    with write_transaction(engine) as conn:
        done = analyze_tables(conn, stale)
    if done:
        log.info(
            "planner statistics of %s were stale (changed since their last ANALYZE): analyzed in %.1f s",
            ", ".join(done),
            time.perf_counter() - t0,
        )
    return done


def clear_dead_rows(engine: Engine, dry_run: bool) -> list[str]:
    """VACUUM the bulk's tables holding more dead rows than live; return those vacuumed.

    A dry run vacuums nothing and says what the run that executes will vacuum.
    """
    if not is_postgres(engine):
        return []
    with read_connection(engine) as conn:
        heavy = dead_heavy_tables(conn)
    if not heavy:
        return []
    if dry_run:
        log.warning(
            "%s hold more dead rows than live ones (a mass delete's): the run that executes will "
            "VACUUM them before its first batch",
            ", ".join(heavy),
        )
        return []
    log.info("%s hold more dead rows than live ones: vacuuming at autovacuum's pace", ", ".join(heavy))
    t0 = time.perf_counter()
    done = vacuum_tables(engine, heavy)
    if done:
        log.info("vacuumed %s in %.1f s", ", ".join(done), time.perf_counter() - t0)
    return done


class StatisticsWatch:
    """Clear a mass delete's dead rows and freshen the statistics now, then again when ``due``."""

    def __init__(self, engine: Engine, every_s: float = RECHECK_S, dry_run: bool = False) -> None:
        self.engine = engine
        self.every_s = every_s
        self.analyzed: list[str] = []
        self.vacuumed: list[str] = []
        self._last = time.perf_counter()
        if is_postgres(engine):
            try:
                self.vacuumed = clear_dead_rows(engine, dry_run)
            except SQLAlchemyError as exc:  # an optimisation: it never fails the operation
                log.warning("dead rows not vacuumed: %s", mask_secrets(str(exc)).splitlines()[0])
        self._check()

    def due(self) -> None:
        """Check again when ``every_s`` has passed since the last check."""
        if time.perf_counter() - self._last >= self.every_s:
            self._last = time.perf_counter()
            self._check()

    def _check(self) -> None:
        if not is_postgres(self.engine):
            return
        try:
            self.analyzed += freshen_statistics(self.engine)
        except SQLAlchemyError as exc:  # an optimisation: it never fails the operation
            log.warning("planner statistics not refreshed: %s", mask_secrets(str(exc)).splitlines()[0])
